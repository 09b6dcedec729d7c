"""Which models are served (live heartbeats), and admission control per stage.

Both run before the gateway touches a request's images: a request for a model the gateway does
not serve is a 404, but one for a model that had a live worker in the last few minutes is a 503
(its workers are restarting, or a restarted Redis lost their heartbeats: retry, not "no such
model"); one whose queue is full a 429 with ``Retry-After``; one that arrives while Redis is
unreachable a 503 — all without decoding, fetching or storing anything (issue 9's "images
decoded for rejected requests: 0").

Reads are cached for a short, configured time (``admission.directory_ttl_s``,
``admission.stats_ttl_s``) so a burst does not turn into one Redis round trip per request per
check; between two reads of a queue's depth the gateway counts what it admitted itself, so a
burst cannot overshoot the bound by more than one refresh interval's worth of other replicas'
traffic. A request refused after admission but before any job was queued (a bad image, a
refused URL) hands its share back (:meth:`AdmissionControl.release`), so a burst of invalid
requests cannot make valid ones look like overload. The queue's own atomic bound
(``QueueSettings.max_queue_depth``, enforced by the enqueue script) remains the hard limit
behind this early one.
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


RECENTLY_SERVED_S = 300.0
"""A model whose last worker vanished this recently is "unavailable" (503), not "unknown"."""


@dataclass(frozen=True)
class StageModel:
    """One queue: a stage and the model whose stream it is."""

    stage: keys.Stage
    model: str


class ModelDirectory:
    """Live workers by (stage, model), from heartbeats, cached for ``ttl_s``.

    ``scale_to_zero`` maps a stage to the models whose jobs are queued even with no live worker
    (an autoscaler starts one from the queue's depth): for them ``require`` never answers 503.
    """

    def __init__(
        self,
        backend: Backend,
        ttl_s: float,
        scale_to_zero: Mapping[keys.Stage, frozenset[str]] | None = None,
    ) -> None:
        self._backend = backend
        self._ttl_s = ttl_s
        self._scale_to_zero = dict(scale_to_zero or {})
        self._last_served: dict[tuple[str, str], float] = {}
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
                for worker in self._workers:
                    self._last_served[(worker.stage, worker.model)] = self._read_at
        return self._workers

    @property
    def scale_to_zero_stages(self) -> frozenset[str]:
        """Stages that may have no live worker (readiness does not wait for them)."""
        return frozenset(self._scale_to_zero)

    def _waits_for_autoscaler(self, need: StageModel) -> bool:
        return need.model in self._scale_to_zero.get(need.stage, frozenset())

    async def served(self, stage: keys.Stage | None = None) -> set[str]:
        """The models with at least one live worker (of ``stage`` when given)."""
        return {w.model for w in await self.workers() if stage is None or w.stage == stage}

    async def require(self, requested: StageModel, downstream: Iterable[StageModel] = ()) -> None:
        """404 for an unknown model; 503 unless ``requested`` and every ``downstream`` stage
        have a live worker (or may scale to zero: the job then waits in its queue)."""
        if not self._waits_for_autoscaler(requested) and requested.model not in await self.served(
            requested.stage
        ):
            seen = self._last_served.get((requested.stage, requested.model))
            if seen is not None and time.monotonic() - seen < RECENTLY_SERVED_S:
                raise Unavailable(
                    f"no {requested.stage} worker for {requested.model!r} is running; retry later"
                )
            raise ModelNotFound(
                f"the model {requested.model!r} does not exist or no worker serves it now",
                param="model",
            )
        for need in downstream:
            if self._waits_for_autoscaler(need):
                continue
            if need.model not in await self.served(need.stage):
                raise Unavailable(
                    f"no {need.stage} worker for {need.model!r} is running; retry later"
                )


@dataclass(frozen=True)
class Reservation:
    """What one admitted request added to the local estimates: queue -> (read_at, jobs)."""

    shares: tuple[tuple[StageModel, float, int], ...]


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

    async def admit(self, demand: Mapping[StageModel, int]) -> Reservation:
        """Raise Overloaded (429) unless every queue can take the jobs ``demand`` asks of it."""
        if not self._backend.connected:
            raise Unavailable("the job store is unreachable; retry later")
        loads = {queue: await self._load(queue) for queue in demand}
        for queue, load in loads.items():
            if load + demand[queue] > self.limit(queue.stage):
                raise Overloaded(
                    f"the {queue.stage} queue of {queue.model!r} is full ({load} jobs); retry later"
                )
        shares = []
        for queue, load in loads.items():
            read_at, _ = self._loads[queue]
            self._loads[queue] = (read_at, load + demand[queue])
            shares.append((queue, read_at, demand[queue]))
        return Reservation(tuple(shares))

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose request ended before queueing any job.

        Only while the estimate it was added to is still in use: a newer read of the queue's
        depth already counts what was (or was not) queued.
        """
        for queue, read_at, jobs in reservation.shares:
            cached = self._loads.get(queue)
            if cached is not None and cached[0] == read_at:
                self._loads[queue] = (read_at, max(0, cached[1] - jobs))

    async def _load(self, queue: StageModel) -> int:
        cached = self._loads.get(queue)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._settings.stats_ttl_s:
            return cached[1]
        load = await self._backend.queue_load(queue.stage, queue.model)
        self._loads[queue] = (now, load)
        return load
