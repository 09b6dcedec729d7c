"""Re-enqueue jobs the job store lost, so that an accepted request still gets its one answer.

Redis replicates asynchronously: when a master dies and Sentinel promotes its replica, the
writes the replica had not received are gone. The new master holds a consistent *earlier*
state (a prefix of the old master's writes), so for a job a gateway is waiting on:

- its entry was never replicated: no worker will ever see it, and the waiter would wait
  until the job's deadline for nothing. That is the case handled here;
- its entry is there, undelivered or pending: a worker reads it (again), or reclaims it once
  the lease of the worker that held it on the old master runs out (``XAUTOCLAIM``), since
  that worker's lease touches and acknowledgement happened on the old master only;
- its terminal event was lost: it was written atomically with the entry's ``XACK``, so that
  acknowledgement was lost too and the entry is pending again: reclaimed and re-run.

So a waiting job whose stream entry is missing (``XRANGE`` at its entry id) on two looks a
lease apart is enqueued again under the SAME job id: the enqueue script's per-job dedupe key
was lost with the entry (one script, replicated as one unit), and if it was not, nothing is
queued twice. A re-run answers on the same reply stream; :class:`workers.replies.Subscription`
deduplicates by sequence and position, so what the client receives equals the uninterrupted
answer even if the old master's run had already delivered part of it. Waiting a lease (not
acting at the first miss) leaves room for the entry's ``XACK`` + trim racing the terminal
event to the reader, and costs nothing else: the answer was late anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter
from redis.asyncio import Redis

from workers.connection import CONNECTION_ERRORS, STORE_FULL_ERRORS, Backoff, sleep_until
from workers.errors import TransportError
from workers.protocol import Job
from workers.queue import JobQueue
from workers.replies import ReplyReader, Subscription
from workers.settings import QueueSettings

logger = logging.getLogger(__name__)

LOST_JOBS_REENQUEUED = Counter(
    "seedx_lost_jobs_reenqueued_total",
    "Jobs a gateway found missing from the job store while waiting on them (a failover lost "
    "their last writes) and enqueued again under the same job id.",
)


_SKIPPED: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, *STORE_FULL_ERRORS, TransportError)


class LostJobWatch:
    """A gateway replica's periodic look for waited-on jobs that no stream holds any more."""

    def __init__(
        self, redis: Redis, queue: JobQueue, reader: ReplyReader, settings: QueueSettings
    ) -> None:
        self._redis = redis
        self._queue = queue
        self._reader = reader
        self._settings = settings
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Look every lease until :meth:`stop`; Redis unreachable: try again after backoff."""
        backoff = Backoff(self._settings.reconnect_backoff_cap_s)
        delay = self._settings.lease_s
        while not self._stopping.is_set():
            await sleep_until(self._stopping, delay)
            if self._stopping.is_set():
                return
            try:
                await self.sweep()
                backoff.reset()
                delay = self._settings.lease_s
            except _SKIPPED as exc:
                logger.info("lost-job watch skipped a look: %s", exc)
                delay = backoff.next_delay()
            except Exception:
                logger.exception("lost-job watch failed; retrying")
                delay = backoff.next_delay()

    def stop(self) -> None:
        self._stopping.set()

    async def sweep(self) -> int:
        """One look; re-enqueues the jobs missing since the previous look a lease ago or more.
        Returns how many were enqueued again."""
        watched = [
            (sub, sub.job, sub.entry_id)
            for sub in self._reader.subscriptions()
            if sub.job is not None and sub.entry_id is not None
        ]
        if not watched:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for _, job, entry_id in watched:
            pipe.xrange(job.stream, min=entry_id, max=entry_id, count=1)
        found = await pipe.execute()
        now = time.monotonic()
        again = 0
        for (sub, job, _), entries in zip(watched, found, strict=True):
            if entries or sub.finished:
                sub.missing_since = None
            elif sub.missing_since is None:
                sub.missing_since = now
            elif now - sub.missing_since >= self._settings.lease_s * 0.9:  # a look's jitter
                again += await self._enqueue_again(sub, job)
        return again

    async def _enqueue_again(self, sub: Subscription, job: Job) -> int:
        result = await self._queue.enqueue(job)
        sub.missing_since = None
        if result.entry_id is None:  # the dedupe key survived: the job is not ours to re-run
            logger.warning("job %s is missing from %s but its enqueue is remembered; left as is",
                           sub.job_id, job.stream)  # fmt: skip
            sub.entry_id = None
            return 0
        logger.warning(
            "job %s vanished from %s (a failover lost the job store's last writes); "
            "enqueued again under the same id as %s",
            sub.job_id, job.stream, result.entry_id,
        )  # fmt: skip
        sub.entry_id = result.entry_id
        LOST_JOBS_REENQUEUED.inc()
        return 1
