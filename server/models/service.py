"""The model list, from live worker heartbeats (a model with no live worker is not listed)."""

from __future__ import annotations

from server.admission import ModelDirectory
from server.catalog import endpoints_of
from server.models.schema import ModelCard, ModelList
from workers.keys import Stage
from workers.protocol import WorkerInfo


async def list_models(directory: ModelDirectory, *, demo: bool = False) -> ModelList:
    """One card per (model, stage) that some live worker serves, sorted by id.

    ``demo``: the gateway's ``demo`` setting, copied onto every card (one deployment serves
    either the demo checkpoints or real ones), so a client learns it from the list it reads
    anyway.
    """
    groups: dict[tuple[str, Stage], list[WorkerInfo]] = {}
    for worker in await directory.workers():
        groups.setdefault((worker.model, worker.stage), []).append(worker)
    cards = [
        ModelCard(
            id=model,
            created=int(min(w.started_at for w in workers)),
            stage=stage,
            workers=len(workers),
            endpoints=[str(e) for e in endpoints_of(directory.routing, model, {stage})],
            demo=demo,
        )
        for (model, stage), workers in sorted(groups.items())
    ]
    return ModelList(data=cards)
