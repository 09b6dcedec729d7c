"""The generic worker loop: jobs in from a stream, events out to the requester.

A worker process builds one :class:`Worker` with an async *handler* and runs it. The handler is
an async generator taking ``(job, ctx)`` and yielding events (``TextDelta``, ``ImageReady``, ...);
everything else is the loop's job:

- take at most ``capacity`` jobs at a time, new ones (``XREADGROUP``) or abandoned ones
  (``XAUTOCLAIM`` after a lease), highest ``priority`` first within a batch;
- drop a job that was cancelled or whose deadline passed before it starts, answering
  ``Failed(cancelled|deadline_exceeded)`` (so a retry storm cannot pile onto the GPU);
- send ``Started``, stamp and forward each event, then send ``Done`` (or the handler's own
  terminal event) and acknowledge, atomically;
- turn handler exceptions into ``Failed`` at this boundary (STYLE.md §4);
- heartbeat: publish :class:`~workers.protocol.WorkerInfo`, renew the leases of running jobs,
  and flag ``ctx`` when a job is cancelled, expires, or was reclaimed elsewhere; the handler
  checks ``ctx.stopped`` between steps, and the loop stops forwarding at the next event;
- survive Redis outages: reads back off and retry; a job whose events cannot be written is
  abandoned unacknowledged and is reclaimed after its lease, so nothing accepted is lost;
- leave when its engine dies (``alive`` turns false, or a handler raises
  :class:`~workers.handler.EngineDied`): :meth:`Worker.fail` stops the heartbeat and deletes its
  key at once (the gateway stops routing to it), takes no new job, hands every job it holds back
  unacknowledged (reclaimable at once, by another worker or by this one restarted), and ``run``
  raises :class:`WorkerDied`, so the process exits non-zero and its supervisor restarts it.

``run(burst=True)`` processes what is queued (and what is reclaimable now) and returns, like arq's
``burst`` mode, so tests finish deterministically. Handlers must not block the event loop for
longer than a fraction of ``heartbeat_interval_s``; run blocking GPU calls in a thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from workers import keys, metrics
from workers.blobs import BlobStore
from workers.connection import (
    CONNECTION_ERRORS,
    STORE_FULL_ERRORS,
    Backoff,
    refuse_cluster,
    sleep_until,
    stop_task,
)
from workers.consumer import Delivery, StreamConsumer
from workers.execution import JobExecutor
from workers.handler import EngineDied, Handler, JobContext
from workers.heartbeat import WorkerRegistry
from workers.protocol import Job, Undecodable, WorkerInfo, new_id, parse_job
from workers.settings import QueueSettings
from workers.startup import StartupError

# the handler contract, re-exported for workers
__all__ = ["EngineDied", "Handler", "JobContext", "Worker", "WorkerDied"]

logger = logging.getLogger(__name__)


ALIVE_POLL_S = 0.25
"""How often the worker asks its engine whether it is alive (a cheap flag read)."""
HAND_BACK_WAIT_S = 2.0
"""After the engine died, how long running jobs may take to notice before they are cancelled."""


class WorkerDied(Exception):
    """Raised by :meth:`Worker.run` after :meth:`Worker.fail`: the worker cannot serve any more.
    Worker processes exit with ``exit_code`` (their supervisor, or Kubernetes, restarts them)."""

    exit_code = 3


@dataclass
class _Running:
    delivery: Delivery
    ctx: JobContext | None
    task: asyncio.Task[None]
    handed_back: bool = False  # released for reclaim (attempt abandoned): its lease not renewed


class Worker:
    """Consumes one stage+model job stream with a handler; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        settings: QueueSettings,
        *,
        stage: keys.Stage,
        model: str,
        handler: Handler,
        capacity: int = 1,
        worker_id: str | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.stage = stage
        self.model = model
        self.capacity = capacity
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id()[:8]}"
        self._redis = redis
        self._settings = settings
        self._consumer = StreamConsumer(
            redis, settings, keys.job_stream(stage, model), self.worker_id
        )
        self._registry = WorkerRegistry(redis, settings)
        self._blobs = BlobStore(redis, settings)
        self._executor = JobExecutor(
            redis,
            settings,
            self._consumer,
            handler,
            worker_id=self.worker_id,
            stage=stage,
            on_engine_died=self.fail,
            release=self._hand_back_entry,
        )
        self._alive = alive
        self._failure: str | None = None
        self._withdrawal: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._running: dict[str, _Running] = {}
        self._leases = asyncio.Lock()  # renewals and hand-backs, never interleaved
        self._stopping = asyncio.Event()
        self._closing = asyncio.Event()
        self._started_at = time.time()
        self._next_reclaim = 0.0
        self._next_trim = 0.0

    @property
    def processed(self) -> int:
        """Jobs this worker has finished (in any way) since it started."""
        return self._executor.processed

    @property
    def load(self) -> int:
        """Jobs running now."""
        return len(self._running)

    def info(self) -> WorkerInfo:
        """The heartbeat this worker publishes."""
        return WorkerInfo(
            worker_id=self.worker_id,
            stage=self.stage,
            model=self.model,
            capacity=self.capacity,
            load=self.load,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            heartbeat_at=time.time(),
        )

    def stop(self) -> None:
        """Stop taking jobs; ``run`` returns once running jobs finish (or the grace runs out)."""
        self._stopping.set()

    def fail(self, reason: str) -> None:
        """The worker cannot run jobs any more (its engine died): leave at once.

        The heartbeat stops and its key is deleted now, so the gateway stops routing here; no
        new job is taken; running jobs are not waited for, and every job this worker holds is
        handed back unacknowledged, reclaimable at once; then ``run`` raises
        :class:`WorkerDied`. Idempotent; call it from the worker's event loop.
        """
        if self._failure is not None:
            return
        self._failure = reason
        logger.error("worker %s cannot serve any more (%s); leaving", self.worker_id, reason)
        self._stopping.set()
        self._closing.set()  # the heartbeat and watch loops end
        self._withdrawal = asyncio.get_running_loop().create_task(
            self._withdraw(), name=f"withdraw:{self.worker_id}"
        )

    @property
    def failure(self) -> str | None:
        """Why the worker left (:meth:`fail`), or None."""
        return self._failure

    async def run(self, *, burst: bool = False) -> None:
        """Consume until :meth:`stop` (or, with ``burst``, until nothing is left to do)."""
        logger.info(
            "worker %s consuming %s (capacity %d)", self.worker_id, self.stream, self.capacity
        )
        self._heartbeat_task = asyncio.create_task(
            self._heartbeat_loop(), name=f"heartbeat:{self.worker_id}"
        )
        background = [
            self._heartbeat_task,
            asyncio.create_task(self._watch_loop(), name=f"watch:{self.worker_id}"),
        ]
        try:
            # A cluster is a StartupError (exit 78, never restarted); checked beside the first
            # heartbeat, not before it, so that a worker is visible as soon as it runs.
            await refuse_cluster(self._redis)
        except StartupError:
            self._closing.set()
            for task in background:
                await stop_task(task, self._settings.block_s + 2.0)
            raise
        try:
            await self._consume(burst)
        finally:
            if self._failure is None:
                await self._drain()
            else:
                await self._hand_back()
            self._closing.set()
            for task in background:
                await stop_task(task, self._settings.block_s + 2.0)
            if self._withdrawal is not None:
                await self._withdrawal
            await self._leave()
        if self._failure is not None:
            raise WorkerDied(self._failure)
        logger.info("worker %s stopped after %d jobs", self.worker_id, self.processed)

    @property
    def stream(self) -> str:
        """The job stream this worker consumes."""
        return self._consumer.stream

    # --- the consume loop -------------------------------------------------------------------
    async def _consume(self, burst: bool) -> None:
        backoff = Backoff(self._settings.reconnect_backoff_cap_s)
        while not self._stopping.is_set():
            free = self.capacity - len(self._running)
            if free <= 0:
                await self._wait_for_slot()
                continue
            try:
                deliveries = await self._next_deliveries(free, burst)
                backoff.reset()
            except CONNECTION_ERRORS as exc:
                delay = backoff.next_delay()
                logger.warning("worker cannot reach redis (%s); retrying in %.2fs", exc, delay)
                await sleep_until(self._stopping, delay)
                continue
            except STORE_FULL_ERRORS as exc:  # a group or trim write refused: wait for room
                delay = backoff.next_delay()
                logger.warning("redis is full (%s); retrying in %.2fs", exc, delay)
                await sleep_until(self._stopping, delay)
                continue
            if deliveries and self._failure is not None:
                await self._release([d.entry_id for d in deliveries])
            elif deliveries:
                self._start(deliveries)
            elif burst and not self._running:
                return
            elif burst:
                await self._wait_for_slot()

    async def _hand_back_entry(self, entry_id: str) -> None:
        """Releases a running job's entry (its attempt was abandoned) so it runs again soon.

        Called from the abandoning attempt's own task (``JobExecutor``), and retried while Redis
        is away. The entry is flagged handed back first: from then on it is not renewed, and a
        reclaim of it (the release landed, or the lease ran out meanwhile) starts a new attempt
        rather than leaving it to the abandoned one (``_start``). A retry that finds a newer
        attempt holding the entry releases nothing: that would hand the new attempt's job away.
        The release runs under the lease lock: a renewal sent before it and landing after it set
        the idle time back to 0, and the job waited a whole lease instead of running again at
        once (both retry the moment Redis comes back)."""
        record = self._running.get(entry_id)
        if record is not None:
            if record.task is not asyncio.current_task():
                return  # a newer attempt runs this entry now
            record.handed_back = True
        async with self._leases:
            if record is not None and self._running.get(entry_id) is not record:
                return
            await self._consumer.release([entry_id])
        self._reclaim_soon()

    def _reclaim_soon(self) -> None:
        """A job was handed back after an outage: look for reclaimable jobs at the next turn of
        the loop, not at the next ``reclaim_interval_s``, so it runs again seconds sooner."""
        self._next_reclaim = 0.0

    async def _next_deliveries(self, free: int, burst: bool) -> list[Delivery]:
        now = time.monotonic()
        if burst or now >= self._next_reclaim:
            self._next_reclaim = now + self._settings.reclaim_interval_s
            await self._maintain(now)
            claimed = await self._consumer.claim_abandoned(free)
            if claimed:
                metrics.RECLAIMED.labels(self.stage).inc(len(claimed))
                return claimed
        block = None if burst else self._settings.block_s
        return await self._consumer.read(free, block)

    async def _maintain(self, now: float) -> None:
        """Trim acknowledged history and forget dead consumers, every ``trim_interval_s``."""
        if now < self._next_trim:
            return
        self._next_trim = now + self._settings.trim_interval_s
        await self._consumer.ensure_group()
        await self._consumer.trim()
        live = {info.worker_id for info in await self._registry.list_workers()}
        await self._consumer.prune_consumers(live | {self.worker_id})

    def _start(self, deliveries: list[Delivery]) -> None:
        parsed = [(delivery, parse_job(delivery.raw)) for delivery in deliveries]
        parsed.sort(key=lambda pair: -_priority(pair[1]))
        for delivery, job in parsed:
            current = self._running.get(delivery.entry_id)
            if current is not None and not current.handed_back:
                # This worker's own XAUTOCLAIM took back a job it still runs and has not
                # abandoned: the lease lapsed (the loop stalled past a lease, or every renewal
                # failed) and no other worker claimed it first. The claim made this worker the
                # owner again and reset the idle time, a renewal; starting the job again would
                # run it twice here. An abandoned attempt is flagged handed_back as it abandons.
                logger.warning("job entry %s: lease lapsed while it ran here; it runs on",
                               delivery.entry_id)  # fmt: skip
                continue
            ctx = None
            if isinstance(job, Undecodable):
                task = asyncio.create_task(self._executor.reject(delivery, job))
            else:
                ctx = JobContext(
                    job, delivery.attempt, self.worker_id, self._blobs.until(job.deadline)
                )
                task = asyncio.create_task(self._executor.process(delivery, job, ctx))
            self._running[delivery.entry_id] = _Running(delivery, ctx, task)
            task.add_done_callback(functools.partial(self._forget, delivery.entry_id))
        metrics.RUNNING.labels(self.stage).set(len(self._running))

    def _forget(self, entry_id: str, task: asyncio.Task[None]) -> None:
        """Drops a finished run, unless the entry already runs again here: a handed-back
        attempt may end after the reclaim that started the next one, whose record stays."""
        current = self._running.get(entry_id)
        if current is not None and current.task is task:
            del self._running[entry_id]
        metrics.RUNNING.labels(self.stage).set(len(self._running))

    async def _wait_for_slot(self) -> None:
        tasks = [r.task for r in self._running.values()]
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()

    # --- heartbeat, leases, stop signals ------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """Publish WorkerInfo and renew running jobs' leases every ``heartbeat_interval_s``.

        A failed heartbeat is retried with the reconnect backoff, not a whole interval later:
        the key and the leases may have expired while Redis was down (its restart drops them),
        and until the next heartbeat the gateway sees no worker and other workers may reclaim
        this one's running jobs.
        """
        backoff = Backoff(self._settings.reconnect_backoff_cap_s)
        while not self._closing.is_set():
            delay = self._settings.heartbeat_interval_s
            try:
                await self._heartbeat()
                backoff.reset()
            except (*CONNECTION_ERRORS, *STORE_FULL_ERRORS) as exc:
                logger.warning("heartbeat failed: %s", exc)
                delay = min(delay, backoff.next_delay())
            except Exception:
                logger.exception("heartbeat failed")
            await sleep_until(self._closing, delay)

    async def _heartbeat(self) -> None:
        """Renews the running jobs' leases, then publishes ``info``.

        Leases first: ``XCLAIM`` needs no memory, so while Redis is full (``-OOM`` for the
        heartbeat key's ``SET``) running jobs keep their leases. Published first, the refused
        ``SET`` skipped the renewal, and a lease later this worker's own ``XAUTOCLAIM`` took its
        running job back and ran it again, until the third delivery dead-lettered it (the
        backbone chaos run: a 4 s full window, 2 s leases)."""
        if self._failure is not None:
            return
        async with self._leases:
            running = {e: r for e, r in self._running.items() if not r.handed_back}
            lost = await self._consumer.touch(list(running))
        for entry_id in lost:
            ctx = running[entry_id].ctx if entry_id in running else None
            if ctx is not None:
                ctx.request_stop("lost")
        await self._registry.publish(self.info())

    async def _watch_loop(self) -> None:
        """Flag cancelled and expired jobs quickly (cancellation must not wait a heartbeat), and
        leave as soon as the engine is no longer alive."""
        watch_every = min(self._settings.heartbeat_interval_s, 0.5)
        interval = watch_every if self._alive is None else min(watch_every, ALIVE_POLL_S)
        next_watch = 0.0
        while not self._closing.is_set():
            await sleep_until(self._closing, interval)
            if self._alive is not None and not self._closing.is_set() and not self._alive():
                self.fail("the engine is not alive")
                return
            now = time.monotonic()
            if now < next_watch:
                continue
            next_watch = now + watch_every - interval / 2  # due at this tick, not the next
            try:
                await self._watch()
            except CONNECTION_ERRORS as exc:
                logger.debug("cancel poll failed: %s", exc)

    async def _watch(self) -> None:
        contexts = [r.ctx for r in self._running.values() if r.ctx is not None]
        now = time.time()
        for ctx in contexts:
            if ctx.job.deadline <= now:
                ctx.request_stop("deadline_exceeded")
        cancelled = await self._consumer.cancelled([ctx.job.job_id for ctx in contexts])
        for ctx in contexts:
            if ctx.job.job_id in cancelled:
                ctx.request_stop("cancelled")

    # --- shutdown -------------------------------------------------------------------------------
    async def _drain(self) -> None:
        """Let running jobs finish within the grace period; hand the rest back for reclaim."""
        tasks = [r.task for r in self._running.values()]
        if not tasks:
            return
        grace = self._settings.shutdown_grace_s
        logger.info("waiting up to %.1fs for %d running jobs", grace, len(tasks))
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        if not pending:
            return
        unfinished = [r.delivery.entry_id for r in self._running.values() if r.task in pending]
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=self._settings.block_s + 2.0)
        try:
            await self._consumer.release(unfinished)
            logger.info("released %d unfinished jobs for other workers", len(unfinished))
        except CONNECTION_ERRORS as exc:
            logger.warning("could not release unfinished jobs (%s); they expire by lease", exc)

    async def _withdraw(self) -> None:
        """After :meth:`fail`: no heartbeat from now on (the loop ends first, so none lands
        after the key is deleted), then the key deleted."""
        if self._heartbeat_task is not None:
            await stop_task(self._heartbeat_task, self._settings.block_s + 2.0)
        try:
            await self._registry.remove(self.worker_id)
            logger.info("worker %s deregistered", self.worker_id)
        except CONNECTION_ERRORS as exc:
            logger.warning("could not delete the heartbeat (%s); it expires by lease", exc)

    async def _hand_back(self) -> None:
        """After :meth:`fail`: stop running jobs (their engine is gone) and make every job this
        worker holds reclaimable now, unacknowledged."""
        tasks = [r.task for r in self._running.values()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=HAND_BACK_WAIT_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self._settings.block_s + 2.0)
        try:
            held = await self._consumer.held()
        except CONNECTION_ERRORS as exc:
            logger.warning("cannot list held jobs (%s); they expire by lease", exc)
            return
        await self._release(held)

    async def _release(self, entry_ids: list[str]) -> None:
        if not entry_ids:
            return
        try:
            await self._consumer.release(entry_ids)
            logger.info("handed %d jobs back for other workers", len(entry_ids))
        except CONNECTION_ERRORS as exc:
            logger.warning("could not release held jobs (%s); they expire by lease", exc)

    async def _leave(self) -> None:
        try:
            await self._registry.remove(self.worker_id)
            await self._consumer.leave()
        except CONNECTION_ERRORS as exc:
            logger.warning("could not deregister worker: %s", exc)


def _priority(job: Job | Undecodable) -> int:
    return 10 if isinstance(job, Undecodable) else job.priority
