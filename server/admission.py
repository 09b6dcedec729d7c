"""Which models are served (live heartbeats), and admission control per stage.

Both run before the gateway touches a request's images: a request for a model nobody serves is a
404, one whose queue is full a 429 with ``Retry-After``, and one that arrives while Redis is
unreachable a 503 — all without decoding, fetching or storing anything (issue 9's "images
decoded for rejected requests: 0").

Reads are cached for a short, configured time (``admission.directory_ttl_s``,
``admission.stats_ttl_s``) so a burst does not turn into one Redis round trip per request per
check; between two reads of a queue's depth the gateway counts what it admitted itself, so a
burst cannot overshoot the bound by more than one refresh interval's worth of other replicas'
traffic. The queue's own atomic bound (``QueueSettings.max_queue_depth``, enforced by the
enqueue script) remains the hard limit behind this early one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from server.backend import Backend
from server.errors import ModelNotFound
from server.settings import Admission
from workers import keys
from workers.errors import Overloaded, Unavailable
from workers.protocol import WorkerInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageModel:
    """One queue: a stage and the model whose stream it is."""

    stage: keys.Stage
    model: str


class ModelDirectory:
    """Live workers by (stage, model), from heartbeats, cached for ``ttl_s``."""

    def __init__(self, backend: Backend, ttl_s: float) -> None:
        self._backend = backend
        self._ttl_s = ttl_s
        self._workers: list[WorkerInfo] = []
        self._read_at = -1e9
        self._lock = asyncio.Lock()

    async def workers(self) -> list[WorkerInfo]:
        """The live workers (a cached read; Unavailable when Redis cannot be reached)."""
        if time.monotonic() - self._read_at < self._ttl_s:
            return self._workers
        async with self._lock:
            if time.monotonic() - self._read_at >= self._ttl_s:
                self._workers = await self._backend.live_workers()
                self._read_at = time.monotonic()
        return self._workers

    async def served(self, stage: keys.Stage | None = None) -> set[str]:
        """The models with at least one live worker (of ``stage`` when given)."""
        return {w.model for w in await self.workers() if stage is None or w.stage == stage}

    async def require(self, requested: StageModel, downstream: Iterable[StageModel] = ()) -> None:
        """404 unless ``requested`` is served; 503 unless every ``downstream`` stage is."""
        if requested.model not in await self.served(requested.stage):
            raise ModelNotFound(
                f"the model {requested.model!r} does not exist or no worker serves it now",
                param="model",
            )
        for need in downstream:
            if need.model not in await self.served(need.stage):
                raise Unavailable(
                    f"no {need.stage} worker for {need.model!r} is running; retry later"
                )


class AdmissionControl:
    """Refuses work when a stage's queue is at its bound (see the module docstring)."""

    def __init__(self, backend: Backend, settings: Admission) -> None:
        self._backend = backend
        self._settings = settings
        self._loads: dict[StageModel, tuple[float, int]] = {}

    def limit(self, stage: keys.Stage) -> int:
        """The bound of queued+running jobs of one stage's queue."""
        s = self._settings
        return s.llm_max_queue if stage == "llm" else s.diffusion_max_queue

    async def admit(self, demand: Mapping[StageModel, int]) -> None:
        """Raise Overloaded (429) unless every queue can take the jobs ``demand`` asks of it."""
        if not self._backend.connected:
            raise Unavailable("the job store is unreachable; retry later")
        loads = {queue: await self._load(queue) for queue in demand}
        for queue, load in loads.items():
            if load + demand[queue] > self.limit(queue.stage):
                raise Overloaded(
                    f"the {queue.stage} queue of {queue.model!r} is full ({load} jobs); retry later"
                )
        for queue, load in loads.items():
            read_at, _ = self._loads[queue]
            self._loads[queue] = (read_at, load + demand[queue])

    async def _load(self, queue: StageModel) -> int:
        cached = self._loads.get(queue)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._settings.stats_ttl_s:
            return cached[1]
        load = await self._backend.queue_load(queue.stage, queue.model)
        self._loads[queue] = (now, load)
        return load
