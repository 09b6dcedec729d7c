"""What each model serves: the one mapping from (model, endpoint) to a route or a refusal.

A model is *known* when the gateway's routing names it (``settings.models``: the endpoints'
defaults, the LLM -> de-tokenizer map), when a live worker serves it, or when one did a few
minutes ago. What it serves follows from its stage and the routing:

* an LLM serves ``/v1/chat/completions`` and ``/v1/responses``, and
  ``/v1/images/generations`` or ``/v1/images/edits`` when the routing gives it a de-tokenizer
  (an unconditioned one, or one of ``conditioned``: SEED-X-Edit's second stage);
* a de-tokenizer (a diffusion model) serves ``/v1/images/variations``.

:func:`route` is the decision without I/O; :meth:`server.admission.ModelDirectory.resolve` adds
what only the live heartbeats can say. Together, for every endpoint:

==============================================  =============================================
the model                                        answer
==============================================  =============================================
unknown                                          404 ``model_not_found``
known, but does not serve this endpoint          400 ``invalid_request``, ``param="model"``,
                                                 naming the endpoints that do serve it
known and serves it, no live worker (loading,    503 ``unavailable`` + ``Retry-After``
restarting), or its de-tokenizer has none
known, serves it, live workers                   the route: the queues its jobs go to
==============================================  =============================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from server.settings import ModelRouting
from workers import keys
from workers.errors import InvalidRequest, ModelNotFound


class Endpoint(StrEnum):
    """The endpoints that run a model, as their paths."""

    CHAT = "/v1/chat/completions"
    RESPONSES = "/v1/responses"
    GENERATIONS = "/v1/images/generations"
    EDITS = "/v1/images/edits"
    VARIATIONS = "/v1/images/variations"


STAGE_OF: dict[Endpoint, keys.Stage] = {
    Endpoint.CHAT: "llm",
    Endpoint.RESPONSES: "llm",
    Endpoint.GENERATIONS: "llm",
    Endpoint.EDITS: "llm",
    Endpoint.VARIATIONS: "diffusion",
}
"""The stage whose worker runs the requested model of each endpoint."""


@dataclass(frozen=True)
class StageModel:
    """One queue: a stage and the model whose stream it is."""

    stage: keys.Stage
    model: str


@dataclass(frozen=True)
class Route:
    """Where a request's jobs go: the requested model's queue first, then its de-tokenizer's."""

    model: str
    endpoint: Endpoint
    queues: tuple[StageModel, ...]
    detokenizer: str | None = None


def configured_stages(routing: ModelRouting, model: str) -> frozenset[keys.Stage]:
    """The stages on which the routing names ``model``."""
    return frozenset(stage for stage in keys.STAGES if model in routing.routed(stage))


def configured_models(routing: ModelRouting) -> dict[str, frozenset[keys.Stage]]:
    """Every model the routing names, with its stages."""
    names = set(routing.routed("llm")) | set(routing.routed("diffusion"))
    return {name: configured_stages(routing, name) for name in sorted(names)}


def endpoints_of(
    routing: ModelRouting, model: str, stages: Iterable[keys.Stage]
) -> tuple[Endpoint, ...]:
    """The endpoints that serve ``model`` on ``stages`` (see the module docstring)."""
    stages = frozenset(stages)
    served: list[Endpoint] = []
    if "llm" in stages:
        served += [Endpoint.CHAT, Endpoint.RESPONSES]
        detokenizer = routing.detokenizers.get(model)
        if detokenizer is not None:
            conditioned = detokenizer in routing.conditioned
            served.append(Endpoint.EDITS if conditioned else Endpoint.GENERATIONS)
    if "diffusion" in stages:
        served.append(Endpoint.VARIATIONS)
    return tuple(served)


def route(
    routing: ModelRouting,
    model: str,
    endpoint: Endpoint,
    stages: Iterable[keys.Stage],
    *,
    images: bool = False,
) -> Route:
    """The route of ``model`` on ``endpoint``, known on ``stages`` (configured, live or lately
    seen); raises ModelNotFound (404) when it is known nowhere, InvalidRequest (400,
    ``param="model"``) naming the endpoints that serve it when ``endpoint`` is not one of them.

    ``images``: a chat or Responses answer that may hold images, which then need the model's
    de-tokenizer (generations and edits always do). Whether workers are live is not decided
    here (:meth:`server.admission.ModelDirectory.resolve`).
    """
    stages = frozenset(stages)
    if not stages:
        raise ModelNotFound(
            f"the model {model!r} does not exist (GET /v1/models lists the models served)",
            param="model",
        )
    served = endpoints_of(routing, model, stages)
    if endpoint not in served:
        raise InvalidRequest(
            f"the model {model!r} does not serve this endpoint; it serves {', '.join(served)}",
            param="model",
        )
    requested = StageModel(STAGE_OF[endpoint], model)
    if endpoint in (Endpoint.GENERATIONS, Endpoint.EDITS) or (
        images and endpoint in (Endpoint.CHAT, Endpoint.RESPONSES)
    ):
        detokenizer = routing.detokenizers.get(model)
        if detokenizer is None:
            raise InvalidRequest(
                f"the model {model!r} cannot answer with images", param="modalities"
            )
        return Route(
            model, endpoint, (requested, StageModel("diffusion", detokenizer)), detokenizer
        )
    return Route(model, endpoint, (requested,))


@dataclass(frozen=True)
class ModelState:
    """One known model as ``/readyz`` shows it: ``ready`` when a request for it would be
    accepted now (a live worker, a worker reconnecting after a Redis outage, or a stage that
    scales to zero, whose jobs wait for the autoscaler). ``stage`` is None for a model named
    only in ``models.readiness`` that no worker has served yet."""

    model: str
    stage: keys.Stage | None
    workers: int
    ready: bool
    endpoints: tuple[Endpoint, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "ready": self.ready,
            "workers": self.workers,
            "endpoints": [str(e) for e in self.endpoints],
        }


def readiness_checks(
    states: Iterable[ModelState], routing: ModelRouting, scale_to_zero: Iterable[str] = ()
) -> dict[str, bool]:
    """The model checks of ``/readyz``: each stage serves some model (``workers_llm``,
    ``workers_diffusion``; a stage that scales to zero always does), and, when the routing
    lists ``readiness`` models, each of them is ready (``models``)."""
    states = list(states)
    scaled = frozenset(scale_to_zero)
    checks = {
        f"workers_{stage}": stage in scaled or any(s.ready for s in states if s.stage == stage)
        for stage in keys.STAGES
    }
    if routing.readiness:
        ready = {s.model for s in states if s.ready}
        checks["models"] = all(model in ready for model in routing.readiness)
    return checks
