"""One job's way from delivery to its terminal event (the worker loop's per-job half).

Before starting, the job is dead-lettered if it was delivered too often, or refused if it was
cancelled or its deadline passed; then ``Started`` is sent, the handler's events are forwarded,
and the terminal event is sent together with the acknowledgement. A job whose events cannot be
written, or whose handler cannot store or read a blob (Redis unreachable), is abandoned
unacknowledged and handed back as soon as Redis answers again, so the next reclaim pass starts
another attempt within seconds of the outage (without the hand-back its lease would have to run
out), and nothing accepted is lost. A job whose handler
raised :class:`~workers.handler.EngineDied` (the worker's engine is gone, not the job at fault)
is left unacknowledged too, and the executor tells the worker (``on_engine_died``), which
leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from workers import keys, metrics
from workers.connection import (
    CONNECTION_ERRORS,
    STORE_FULL_ERRORS,
    Backoff,
    retry_while_full,
)
from workers.consumer import Delivery, StreamConsumer
from workers.errors import (
    Cancelled,
    DeadLettered,
    DeadlineExceeded,
    StoreFull,
    TransportError,
    Unavailable,
)
from workers.handler import (
    EngineDied,
    Handler,
    JobContext,
    close_events,
    failure_event,
    stop_event,
)
from workers.logcontext import bind_job
from workers.protocol import (
    TERMINAL_EVENTS,
    Done,
    ErrorPayload,
    Event,
    Failed,
    Job,
    Started,
    Undecodable,
)
from workers.replies import ReplyBatcher, ReplyWriter
from workers.settings import QueueSettings

logger = logging.getLogger(__name__)


class _Abandon(Exception):
    """The job's events cannot be written; leave it unacknowledged for a reclaim."""


_ABANDON_ERRORS: tuple[type[Exception], ...] = (_Abandon, *CONNECTION_ERRORS)


class JobExecutor:
    """Runs delivered jobs of one stream through a handler and answers their requesters."""

    def __init__(
        self,
        redis: Redis,
        settings: QueueSettings,
        consumer: StreamConsumer,
        handler: Handler,
        *,
        worker_id: str,
        stage: keys.Stage,
        release: Callable[[str], Awaitable[None]],
        on_engine_died: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._on_engine_died = on_engine_died
        # makes one abandoned entry reclaimable now; the worker's, serialized with its lease
        # renewals (a renewal landing after the release would undo it)
        self._release = release
        self._settings = settings
        self._consumer = consumer
        self._handler = handler
        self._worker_id = worker_id
        self._stage = stage
        self._batcher = ReplyBatcher(redis)  # every job's events, pipelined together
        self.processed = 0

    async def process(self, delivery: Delivery, job: Job, ctx: JobContext) -> None:
        """Take one delivered job to its end; never raises (outcomes go to metrics and logs)."""
        writer = self._writer(
            job.reply_to, job.job_id, job.request_id, job.trace_id, ctx.attempt, job.deadline
        )
        with bind_job(job.job_id, job.trace_id):
            try:
                outcome = await self._run_job(delivery, job, ctx, writer)
            except _ABANDON_ERRORS as exc:
                logger.warning("abandoning job (reclaimable once Redis answers again): %s", exc)
                outcome = "abandoned"
                await self._hand_back(delivery)
            except EngineDied as exc:
                logger.error("engine died while running the job; leaving it for reclaim: %s", exc)
                outcome = "abandoned"
                if self._on_engine_died is not None:
                    self._on_engine_died(str(exc))
            except Exception:
                logger.exception("transport failure while processing job; leaving it for reclaim")
                outcome = "abandoned"
            metrics.JOBS.labels(self._stage, outcome).inc()
            self.processed += 1

    async def _hand_back(self, delivery: Delivery) -> None:
        """Make an abandoned job reclaimable as soon as Redis answers again.

        Its events could not be written (Redis restarting, a Sentinel failover), and some that
        were written may be gone with an old master, so this attempt cannot go on: a new attempt
        regenerates the answer from its start, and the gateway's subscription delivers only what
        the client has not had. Handing the job back (its idle time set past the lease) lets the
        next reclaim pass of any worker start that attempt seconds after the outage, where
        waiting for the lease to run out would hold the request for a whole ``lease_s``. Tried
        for one lease; after that the lease has run out anyway. An entry the new master never
        had is not this worker's to hand back: the lost-job watch of the gateway re-enqueues it.
        """
        backoff = Backoff(self._settings.reconnect_backoff_cap_s)
        give_up_at = time.monotonic() + self._settings.lease_s
        while time.monotonic() < give_up_at:
            try:
                await self._release(delivery.entry_id)
                return
            except CONNECTION_ERRORS:
                await asyncio.sleep(backoff.next_delay())

    async def _run_job(
        self, delivery: Delivery, job: Job, ctx: JobContext, writer: ReplyWriter
    ) -> metrics.Outcome:
        if delivery.attempt > self._settings.max_deliveries:
            error = DeadLettered(
                f"job was delivered {delivery.attempt} times without finishing "
                f"(limit {self._settings.max_deliveries}); it may crash workers"
            )
            await self._consumer.dead_letter(delivery, error.message, error, writer)
            return "dead_lettered"
        if job.deadline <= time.time():
            logger.info("job deadline passed before it started; dropped")
            late = DeadlineExceeded("the job's deadline passed before a worker could start it")
            return await self._refuse(delivery, writer, late)
        return await self._execute(delivery, job, ctx, writer)

    async def _refuse(
        self, delivery: Delivery, writer: ReplyWriter, error: TransportError
    ) -> metrics.Outcome:
        """End a job that must not start with ``error`` as its terminal event."""
        refusal = Failed(error=ErrorPayload.from_error(error))
        await self._consumer.finish(delivery.entry_id, writer, refusal)
        return _outcome(refusal)

    async def _execute(
        self, delivery: Delivery, job: Job, ctx: JobContext, writer: ReplyWriter
    ) -> metrics.Outcome:
        wait_s = max(0.0, time.time() - job.created_at)
        started_event = Started(worker_id=self._worker_id, queue_wait_s=wait_s)
        try:
            if not await self._consumer.start(job.job_id, writer, started_event):
                logger.info("job cancelled before it started")
                return await self._refuse(delivery, writer, Cancelled("the job was cancelled"))
        except CONNECTION_ERRORS as exc:
            raise _Abandon(f"cannot write events: {exc}") from exc
        metrics.QUEUE_WAIT.labels(self._stage).observe(wait_s)
        logger.info("job started (attempt %d, queued %.3fs)", ctx.attempt, wait_s)
        started = time.monotonic()
        terminal = await self._run_handler(job, ctx, writer)
        if terminal is None:
            logger.warning("job was reclaimed by another worker; dropping this attempt")
            return "lost"
        terminal = await self._finish(delivery, job, ctx, writer, terminal)
        elapsed = time.monotonic() - started
        metrics.JOB_SECONDS.labels(self._stage).observe(elapsed)
        logger.info("job finished: %s in %.3fs", terminal.type, elapsed)
        return _outcome(terminal)

    async def _finish(
        self,
        delivery: Delivery,
        job: Job,
        ctx: JobContext,
        writer: ReplyWriter,
        terminal: Done | Failed,
    ) -> Done | Failed:
        """Send the terminal event with the ack; while Redis is full, retry until the job's
        deadline. Still full: free the blobs the job stored (deleting needs no memory) and try
        once more, failing the job with StoreFull, so its requester hears why; failing that,
        acknowledge it alone (a re-run would hit the same wall) and say so in the log. Returns
        the terminal event sent."""

        async def finish(event: Done | Failed) -> None:
            try:
                await self._consumer.finish(delivery.entry_id, writer, event)
            except STORE_FULL_ERRORS:
                writer.unstamp()  # the transaction was refused whole
                raise

        try:
            await retry_while_full(
                lambda: finish(terminal),
                deadline=job.deadline,
                action="sending the job's answer",
                backoff_cap_s=self._settings.reconnect_backoff_cap_s,
            )
            return terminal
        except StoreFull as exc:
            full = exc
        with contextlib.suppress(TransportError, *CONNECTION_ERRORS):
            await ctx.blobs.release(job.job_id)
        failed = Failed(error=ErrorPayload.from_error(full))
        try:
            await finish(failed)
        except STORE_FULL_ERRORS:
            with contextlib.suppress(*CONNECTION_ERRORS):  # XACK needs no memory
                await self._redis.xack(self._consumer.stream, keys.WORKER_GROUP, delivery.entry_id)
            logger.error(
                "redis is full: the job failed and its answer could not be written; its "
                "requester sees its deadline pass (%s)",
                full.message,
            )
        return failed

    async def _run_handler(
        self, job: Job, ctx: JobContext, writer: ReplyWriter
    ) -> Done | Failed | None:
        """Forward the handler's events; return the terminal event (None: job was lost)."""
        events = self._handler(job, ctx)
        try:
            async for event in events:
                if ctx.stopped:
                    break
                if isinstance(event, TERMINAL_EVENTS):
                    return event
                await self._emit(writer, event)
        except (_Abandon, EngineDied):
            raise
        except StoreFull as exc:  # full until the deadline: the requester hears why
            return failure_event(exc)
        except Unavailable as exc:  # the handler's own Redis step (a blob) met an outage
            raise _Abandon(f"cannot reach Redis: {exc}") from exc
        except Exception as exc:
            return failure_event(exc)
        finally:
            await close_events(events)
        return stop_event(ctx.stop_reason) if ctx.stopped else Done()

    async def _emit(self, writer: ReplyWriter, event: Event) -> None:
        try:
            await writer.emit(event)
        except CONNECTION_ERRORS as exc:
            raise _Abandon(f"cannot write events: {exc}") from exc

    async def reject(self, delivery: Delivery, job: Undecodable) -> None:
        """Answer a message this worker cannot decode, then dead-letter it; never raises."""
        writer = None
        if job.job_id and job.reply_to:
            writer = self._writer(job.reply_to, job.job_id, job.request_id, job.trace_id, 1)
        logger.warning("rejecting undecodable job %s: %s", job.job_id, job.error.message)
        try:
            await self._consumer.dead_letter(delivery, job.error.message, job.error, writer)
            metrics.JOBS.labels(self._stage, "rejected").inc()
        except CONNECTION_ERRORS as exc:
            logger.warning("cannot reject job yet (%s); it will be retried", exc)

    def _writer(
        self,
        reply_to: str,
        job_id: str,
        request_id: str | None,
        trace_id: str,
        attempt: int,
        deadline: float | None = None,
    ) -> ReplyWriter:
        return ReplyWriter(
            self._redis,
            self._settings,
            reply_to=reply_to,
            job_id=job_id,
            request_id=request_id or job_id,
            trace_id=trace_id,
            attempt=attempt,
            batcher=self._batcher,
            deadline=deadline,
        )


def _outcome(event: Done | Failed) -> metrics.Outcome:
    if isinstance(event, Done):
        return "done"
    code = event.error.code
    if code in ("cancelled", "deadline_exceeded"):
        return code  # type: ignore[return-value]  # both are Outcome literals
    return "failed"
