"""The job transport's public face: what the gateway and the worker processes import.

Gateway (one per replica)::

    transport = Transport.connect(redis_settings, queue_settings)
    await transport.start()                       # starts the replica's reply reader
    ref = await transport.blobs.put(png, content_type="image/png", owner=request_id)
    job = ChatJob(..., reply_to=transport.reply_to, deadline=deadline_in(60))
    async with await transport.submit(job) as events:
        async for reply in events:                # Started, TextDelta, ..., Done | Failed
            ...
    await transport.blobs.release(request_id)
    await transport.close()

A worker process uses :class:`workers.worker.Worker` (with a :data:`workers.handler.Handler`)
instead; this module deliberately does not import it, so the gateway does not load the worker
side (nor register its metrics). The parts (:class:`JobQueue`, :class:`ReplyReader`,
:class:`BlobStore`, :class:`WorkerRegistry`) live in their own modules and can be used directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from redis.asyncio import Redis

from workers.blobs import BlobStore
from workers.connection import create_redis, stop_task, unavailable_on_disconnect
from workers.errors import DuplicateJob
from workers.heartbeat import WorkerRegistry
from workers.lost_jobs import LostJobWatch
from workers.protocol import Job, new_id
from workers.queue import EnqueueResult, JobQueue, QueueStats
from workers.replies import ReplyReader, Subscription
from workers.settings import QueueSettings, RedisSettings

__all__ = [
    "BlobStore",
    "EnqueueResult",
    "JobQueue",
    "QueueStats",
    "ReplyReader",
    "Subscription",
    "Transport",
    "WorkerRegistry",
    "create_redis",
    "default_replica_id",
]

logger = logging.getLogger(__name__)


def default_replica_id() -> str:
    """A replica id unique to this process (a reply stream must have exactly one reader)."""
    return f"{socket.gethostname()}-{os.getpid()}-{new_id()[:8]}"


class Transport:
    """The gateway side: submit jobs and wait for their events, cancel, blobs, live workers."""

    def __init__(
        self,
        redis: Redis,
        settings: QueueSettings,
        replica_id: str | None = None,
        *,
        owns_redis: bool = False,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.queue = JobQueue(redis, settings)
        self.blobs = BlobStore(redis, settings)
        self.workers = WorkerRegistry(redis, settings)
        self.reader = ReplyReader(redis, settings, replica_id or default_replica_id())
        self._lost_jobs = LostJobWatch(redis, self.queue, self.reader, settings)
        self._lost_jobs_task: asyncio.Task[None] | None = None
        self._owns_redis = owns_redis

    @classmethod
    def connect(
        cls, redis: RedisSettings, settings: QueueSettings, replica_id: str | None = None
    ) -> Transport:
        """A transport on its own connection pool (closed by :meth:`close`)."""
        return cls(create_redis(redis), settings, replica_id, owns_redis=True)

    @property
    def reply_to(self) -> str:
        """The reply stream to put in every job's ``reply_to``."""
        return self.reader.stream

    async def start(self) -> None:
        """Start the reply reader and the lost-job watch (call once, before submitting)."""
        await self.reader.start()
        self._lost_jobs_task = asyncio.create_task(self._lost_jobs.run(), name="lost-job-watch")

    async def close(self) -> None:
        """Stop the reader (waiters get Unavailable) and close the pool if this owns it."""
        if self._lost_jobs_task is not None:
            self._lost_jobs.stop()
            await stop_task(self._lost_jobs_task, self.settings.block_s + 2.0)
            self._lost_jobs_task = None
        await self.reader.close()
        if self._owns_redis:
            await self.redis.aclose()

    async def submit(self, job: Job) -> Subscription:
        """Enqueue ``job`` and return the subscription to its events.

        Subscribes before enqueueing so no event can be missed. Raises Overloaded (queue full),
        Unavailable (Redis down), or DuplicateJob when the idempotency key names another job.
        """
        if job.reply_to != self.reply_to:
            raise ValueError(f"job.reply_to must be {self.reply_to!r} to be answered here")
        subscription = self.reader.subscribe(job.job_id, job.deadline)
        try:
            result = await self.queue.enqueue(job)
        except BaseException:
            subscription.close()
            raise
        if result.duplicate:
            subscription.close()
            raise DuplicateJob(
                f"idempotency key already used by job {result.job_id}", job_id=result.job_id
            )
        subscription.job, subscription.entry_id = job, result.entry_id  # for the lost-job watch
        return subscription

    async def cancel(self, job_id: str) -> None:
        """Cancel a job wherever it is (queued: never runs; running: stops at its next step)."""
        await self.queue.cancel(job_id)

    async def ping(self) -> bool:
        """Whether Redis answers (for /readyz); never raises."""
        try:
            async with unavailable_on_disconnect("pinging"):
                return bool(await self.redis.ping())
        except Exception:
            return False
