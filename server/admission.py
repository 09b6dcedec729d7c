"""Which models are served (live heartbeats), and admission control per stage.

Both run before the gateway touches a request's images: a request for a model the gateway does
not know is a 404; one for a known model (named by the routing, or served by a live worker in
the last few minutes) on an endpoint it does not serve a 400 naming the endpoints that do; one
for a known model with no live worker a 503 with ``Retry-After`` (it is loading, its workers are
restarting, or a restarted Redis lost their heartbeats: retry, not "no such model"; see
:mod:`server.catalog`); one whose queue is full a 429 with ``Retry-After``; one that arrives
while Redis is unreachable a 503 — all without decoding, fetching or storing anything (issue
9's "images decoded for rejected requests: 0").

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
from server.catalog import (
    Endpoint,
    ModelState,
    Route,
    StageModel,
    configured_models,
    configured_stages,
    endpoints_of,
    route,
)
from server.settings import Admission, ModelRouting
from workers import keys
from workers.errors import Overloaded, Unavailable
from workers.protocol import WorkerInfo

__all__ = ["AdmissionControl", "ModelDirectory", "Reservation", "StageModel"]

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
"""A model whose last worker vanished this recently is known (503 while it has no worker), even
when the routing does not name it."""


class ModelDirectory:
    """Live workers by (stage, model), from heartbeats, cached for ``ttl_s``; and, with the
    routing, what each known model serves (:mod:`server.catalog`) and whether it is ready.

    ``scale_to_zero`` maps a stage to the models whose jobs are queued even with no live worker
    (an autoscaler starts one from the queue's depth): for them ``resolve`` never answers 503.

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
        routing: ModelRouting | None = None,
    ) -> None:
        self._backend = backend
        self._ttl_s = ttl_s
        self._max_age_s = max_age_s
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._scale_to_zero = dict(scale_to_zero or {})
        self.routing = routing if routing is not None else ModelRouting()
        self._last_served: dict[tuple[keys.Stage, str], float] = {}
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

    def _renewing_after_outage(self, stage: keys.Stage, model: str) -> bool:
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

    # --- what each model serves ----------------------------------------------------------------
    def known_stages(self, model: str) -> frozenset[keys.Stage]:
        """The stages ``model`` is known on, from the routing and the last read of the live
        workers: configured there, served now, or served less than ``RECENTLY_SERVED_S`` ago."""
        now = time.monotonic()
        live = {w.stage for w in self._workers if w.model == model}
        recent: set[keys.Stage] = {
            stage
            for (stage, name), seen in self._last_served.items()
            if name == model and now - seen < RECENTLY_SERVED_S
        }
        return configured_stages(self.routing, model) | live | recent

    def route_now(self, model: str, endpoint: Endpoint, *, images: bool = False) -> Route:
        """:func:`server.catalog.route` on what this directory knows now, without I/O (400 or
        404 only; :meth:`resolve` also checks that the route's workers are live)."""
        return route(self.routing, model, endpoint, self.known_stages(model), images=images)

    def detokenizer_for(self, model: str, *, conditioned: bool) -> str:
        """The de-tokenizer that renders ``model``'s images on ``/v1/images/edits``
        (``conditioned``) or ``/v1/images/generations``; 400/404 as :meth:`route_now`."""
        endpoint = Endpoint.EDITS if conditioned else Endpoint.GENERATIONS
        detokenizer = self.route_now(model, endpoint).detokenizer
        assert detokenizer is not None  # both endpoints route through one
        return detokenizer

    async def resolve(self, model: str, endpoint: Endpoint, *, images: bool = False) -> Route:
        """The route of ``model`` on ``endpoint``, or the refusal every endpoint answers alike:
        404 unknown model, 400 (``param="model"``) naming the endpoints that serve it, 503 while
        it (or its de-tokenizer) has no live worker: loading or restarting. See
        :mod:`server.catalog`."""
        await self.workers()
        if not self.known_stages(model):  # a "no such model" is never taken from a stale read
            await self.workers(fresh=True)
        chosen = self.route_now(model, endpoint, images=images)
        await self._require_live(chosen.queues)
        return chosen

    async def require(self, requested: StageModel, downstream: Iterable[StageModel] = ()) -> None:
        """:meth:`resolve` for callers that name the queues: ``requested`` must be a model its
        stage serves (an LLM for chat, Responses, generations and edits, a de-tokenizer for
        variations), and it and every ``downstream`` queue need a live worker (or a stage that
        scales to zero: the job then waits in its queue)."""
        endpoint = Endpoint.CHAT if requested.stage == "llm" else Endpoint.VARIATIONS
        await self.workers()
        if not self.known_stages(requested.model):
            await self.workers(fresh=True)
        self.route_now(requested.model, endpoint)
        await self._require_live((requested, *downstream))

    async def _require_live(self, queues: Iterable[StageModel]) -> None:
        """503 unless each queue has a live worker (or waits for an autoscaler)."""
        for need in queues:
            if self._waits_for_autoscaler(need) or await self._serves(need):
                continue
            raise Unavailable(
                f"no {need.stage} worker for {need.model!r} is running (it is loading or "
                "restarting); retry later"
            )

    # --- readiness -------------------------------------------------------------------------------
    async def states(self) -> list[ModelState]:
        """Every known model (configured, in ``routing.readiness``, served now or lately) and
        whether a request for it would be accepted now; sorted by model and stage.

        A model that looks not ready on a read past its TTL is checked on a fresh one.
        """
        workers = await self.workers()
        if any(not state.ready for state in self.states_of(workers)):
            workers = await self.workers(fresh=True)
        return self.states_of(workers)

    def states_of(self, workers: list[WorkerInfo]) -> list[ModelState]:
        """:meth:`states` as ``workers`` make them (no I/O; ``[]`` while Redis is down)."""
        counts: dict[tuple[str, keys.Stage], int] = {}
        for worker in workers:
            counts[(worker.model, worker.stage)] = counts.get((worker.model, worker.stage), 0) + 1
        names = set(configured_models(self.routing)) | set(self.routing.readiness)
        names |= {model for _, model in self._last_served} | {model for model, _ in counts}
        states = []
        for model in sorted(names):
            stages = self.known_stages(model) | {s for m, s in counts if m == model}
            if not stages:
                states.append(ModelState(model, None, 0, False, ()))
            for stage in sorted(stages):
                live = counts.get((model, stage), 0)
                need = StageModel(stage, model)
                ready = (
                    live > 0
                    or self._waits_for_autoscaler(need)
                    or self._renewing_after_outage(stage, model)
                )
                served = endpoints_of(self.routing, model, {stage})
                states.append(ModelState(model, stage, live, ready, served))
        return states


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
