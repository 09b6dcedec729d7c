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
traffic. Past its TTL a read is refreshed *ahead*: while it is younger than the matching
``*_max_age_s``, it still answers and one background task reads the new value, so under steady
traffic no request waits on a Redis round trip before its job is queued (issue 6's added TTFT);
only a read older than that (an idle gateway) is awaited. A stale read may admit but never
refuse: before a 429, 503 or 404 rests on a read past its TTL, the request waits for a fresh one
(the read already in flight, if any), so a burst after a quiet moment is not turned away on an
estimate that still counts jobs which have finished since. A request refused after admission but
before any job was queued (a bad image, a refused URL) hands its share back
(:meth:`AdmissionControl.release`), so a burst of invalid requests cannot make valid ones look
like overload. The queue's own atomic bound
(``QueueSettings.max_queue_depth``, enforced by the enqueue script) remains the hard limit
behind this early one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.backend import Backend
from server.errors import ModelNotFound
from server.settings import Admission
from workers import keys
from workers.errors import Overloaded, Unavailable
from workers.protocol import WorkerInfo

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class BackgroundReads(Generic[K]):
    """At most one background read per key; failures are logged, never raised.

    A failed refresh leaves the old value in place; once it is older than its max age the next
    request awaits a read itself and sees the error (503 when Redis is down).
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._tasks: dict[K, asyncio.Task[None]] = {}

    def start(self, key: K, read: Callable[[], Awaitable[object]]) -> None:
        """Run ``read()`` in the background unless a read of ``key`` is already running."""
        if key in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run(key, read))
        self._tasks[key] = task

    async def read_fresh(
        self,
        key: K,
        read: Callable[[], Awaitable[object]],
        read_at: Callable[[], float],
        ttl_s: float,
    ) -> None:
        """Until a read of ``key`` that is not stale for a request arriving now has landed.

        Every request waiting here shares one read (the one in flight, or a new one); if that
        read failed in the background, it is made again in the open, so its error shows.
        """
        asked = time.monotonic()
        self.start(key, read)
        task = self._tasks.get(key)
        if task is not None:
            await asyncio.shield(task)
        if outdated(read_at(), asked, ttl_s):
            await read()

    async def _run(self, key: K, read: Callable[[], Awaitable[object]]) -> None:
        try:
            await read()
        except Exception as exc:  # a refresh must never end in an unretrieved task error
            logger.debug("background read of %s %s failed: %s", self._what, key, exc)
        finally:
            self._tasks.pop(key, None)

    async def close(self) -> None:
        """Cancel reads still running (at shutdown)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def outdated(read_at: float, asked: float, ttl_s: float) -> bool:
    """Whether a read made at ``read_at`` is past its TTL and older than a request made at
    ``asked`` (a read that started after the request is as fresh as it can get)."""
    return read_at < asked and time.monotonic() - read_at >= ttl_s


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

    A heartbeat is a key that expires ``heartbeat_ttl_s`` (the workers' lease) after it was
    written, and its clock runs while Redis is down: after an outage of about a lease, or a
    restart, every worker looks dead until it heartbeats again (it retries a failed heartbeat
    after the reconnect backoff), although each is alive and reconnecting. So a "no worker" is
    not believed, for one TTL after the gateway reached Redis again, for a model that was served
    when the outage began: its jobs are queued, and the workers take them as they come back.
    """

    def __init__(
        self,
        backend: Backend,
        ttl_s: float,
        scale_to_zero: Mapping[keys.Stage, frozenset[str]] | None = None,
        max_age_s: float = 0.0,
        heartbeat_ttl_s: float = keys.DEFAULT_LEASE_S,
    ) -> None:
        self._backend = backend
        self._ttl_s = ttl_s
        self._max_age_s = max_age_s
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._scale_to_zero = dict(scale_to_zero or {})
        self._last_served: dict[tuple[str, str], float] = {}
        self._workers: list[WorkerInfo] = []
        self._read_at = -1e9
        self._refresh: BackgroundReads[str] = BackgroundReads("the worker directory")

    async def workers(self, fresh: bool = False) -> list[WorkerInfo]:
        """The live workers (a cached read; Unavailable when Redis cannot be reached).

        ``fresh``: no read past its TTL (the one in flight is awaited, or a new one made).
        """
        age = time.monotonic() - self._read_at
        if age < self._ttl_s:
            return self._workers
        if age < self._max_age_s and not fresh:
            self._refresh.start("workers", self._read)
            return self._workers
        await self._refresh.read_fresh("workers", self._read, lambda: self._read_at, self._ttl_s)
        return self._workers

    async def _read(self) -> None:
        self._workers = await self._backend.live_workers()
        self._read_at = time.monotonic()
        for worker in self._workers:
            self._last_served[(worker.stage, worker.model)] = self._read_at

    async def close(self) -> None:
        """Stop a background read (at shutdown)."""
        await self._refresh.close()

    @property
    def scale_to_zero_stages(self) -> frozenset[str]:
        """Stages that may have no live worker (readiness does not wait for them)."""
        return frozenset(self._scale_to_zero)

    def _waits_for_autoscaler(self, need: StageModel) -> bool:
        return need.model in self._scale_to_zero.get(need.stage, frozenset())

    async def served(self, stage: keys.Stage | None = None, fresh: bool = False) -> set[str]:
        """The models with at least one live worker (of ``stage`` when given)."""
        workers = await self.workers(fresh)
        return {w.model for w in workers if stage is None or w.stage == stage}

    async def _serves(self, need: StageModel) -> bool:
        """Whether ``need`` has a live worker; a "no" is never taken from a stale read, nor
        from heartbeats that an outage kept from being renewed (see the class docstring)."""
        if need.model in await self.served(need.stage):
            return True
        if need.model in await self.served(need.stage, fresh=True):
            return True
        return self._renewing_after_outage(need.stage, need.model)

    async def serving_stages(self) -> set[str]:
        """Stages with a live worker, or with workers whose heartbeats an outage interrupted
        (``/readyz``: a Redis restart must not take every gateway out of its Service)."""
        stages = {w.stage for w in await self.workers()}
        return stages | {
            stage for stage, model in self._last_served if self._renewing_after_outage(stage, model)
        }

    def _renewing_after_outage(self, stage: str, model: str) -> bool:
        """Whether workers of ``stage``/``model`` were seen within a heartbeat TTL of the last
        outage's start, and that outage ended less than a TTL ago (their heartbeats may not be
        back)."""
        outage = self._backend.last_outage
        seen = self._last_served.get((stage, model))
        if outage is None or seen is None:
            return False
        began, ended = outage
        ttl_s = self._heartbeat_ttl_s
        return seen >= began - ttl_s and time.monotonic() - ended < ttl_s

    async def require(self, requested: StageModel, downstream: Iterable[StageModel] = ()) -> None:
        """404 for an unknown model; 503 unless ``requested`` and every ``downstream`` stage
        have a live worker (or may scale to zero: the job then waits in its queue)."""
        if not self._waits_for_autoscaler(requested) and not await self._serves(requested):
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
            if not await self._serves(need):
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
        self._refresh: BackgroundReads[StageModel] = BackgroundReads("the depth of")

    def limit(self, stage: keys.Stage) -> int:
        """The bound of queued+running jobs of one stage's queue."""
        s = self._settings
        return s.llm_max_queue if stage == "llm" else s.diffusion_max_queue

    async def admit(self, demand: Mapping[StageModel, int]) -> Reservation:
        """Raise Overloaded (429) unless every queue can take the jobs ``demand`` asks of it."""
        if not self._backend.connected:
            raise Unavailable("the job store is unreachable; retry later")
        asked = time.monotonic()
        loads = {queue: await self._load(queue) for queue in demand}
        for queue, load in loads.items():
            read_at, ttl_s = self._loads[queue][0], self._settings.stats_ttl_s
            if load + demand[queue] > self.limit(queue.stage) and outdated(read_at, asked, ttl_s):
                loads[queue] = load = await self._load(queue, fresh=True)
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

    async def _load(self, queue: StageModel, fresh: bool = False) -> int:
        """Queued+running jobs of ``queue`` (see the module docstring for how fresh).

        ``fresh``: no read past its TTL (the one in flight is awaited, or a new one made).
        """
        cached = self._loads.get(queue)
        if cached is not None:
            age = time.monotonic() - cached[0]
            if age < self._settings.stats_ttl_s:
                return cached[1]
            if age < self._settings.stats_max_age_s and not fresh:
                self._refresh.start(queue, lambda: self._read(queue))
                return cached[1]
        await self._refresh.read_fresh(
            queue,
            lambda: self._read(queue),
            lambda: self._loads.get(queue, (-math.inf, 0))[0],
            self._settings.stats_ttl_s,
        )
        return self._loads[queue][1]

    async def _read(self, queue: StageModel) -> int:
        read_at = time.monotonic()
        load = await self._backend.queue_load(queue.stage, queue.model)
        cached = self._loads.get(queue)
        if cached is None or cached[0] < read_at:  # a slower, older read never wins
            self._loads[queue] = (read_at, load)
        return load

    async def close(self) -> None:
        """Stop background reads (at shutdown)."""
        await self._refresh.close()
