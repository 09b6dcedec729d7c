"""What the gateway needs from the job transport, as a Protocol, and its Redis implementation.

Services depend on :class:`Backend`, never on Redis: unit tests pass a fake that implements it
(``tests/unit/server/fakes.py``), the app passes :class:`RedisBackend`, a thin adapter over
:class:`workers.transport.Transport` (one reply-reader task per process, pooled connections, no
blocking connection per request).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from workers import keys
from workers.protocol import BlobRef, Job, Reply, WorkerInfo
from workers.settings import QueueSettings, RedisSettings
from workers.transport import QueueStats, Transport


class EventStream(Protocol):
    """The events of one job, up to and including its terminal event."""

    def __aiter__(self) -> AsyncIterator[Reply]:
        """Iterate the job's events; raises the transport error that ended it, if any."""
        ...

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        ...


class Blobs(Protocol):
    """Binary blobs with a TTL (``workers.blobs.BlobStore``)."""

    async def put(
        self,
        data: bytes,
        *,
        content_type: str | None = None,
        owner: str | None = None,
        ttl_s: float | None = None,
    ) -> BlobRef:
        """Store ``data``; owned blobs are freed by :meth:`release` of their owner."""
        ...

    async def get(self, ref: BlobRef) -> bytes:
        """The bytes of a blob (BlobMissing when expired)."""
        ...

    async def release(self, owner: str) -> int:
        """Delete every blob ``owner`` owns."""
        ...


class Backend(Protocol):
    """The gateway's side of the job protocol."""

    @property
    def reply_to(self) -> str:
        """The reply stream to put in every job."""
        ...

    @property
    def blobs(self) -> Blobs:
        """The blob store."""
        ...

    @property
    def connected(self) -> bool:
        """False while the reply reader is cut off from Redis."""
        ...

    @property
    def last_outage(self) -> tuple[float, float] | None:
        """When the reply reader last lost Redis and reached it again (monotonic), if ever."""
        ...

    async def start(self) -> None:
        """Start the reply reader."""
        ...

    async def close(self) -> None:
        """Stop the reply reader and free connections."""
        ...

    async def submit(self, job: Job) -> EventStream:
        """Enqueue ``job`` (Overloaded when its queue is full, Unavailable when Redis is down)."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Ask the worker to stop ``job_id`` (or never start it)."""
        ...

    async def ping(self) -> bool:
        """Whether Redis answers; never raises."""
        ...

    async def live_workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is fresh."""
        ...

    async def queue_load(self, stage: keys.Stage, model: str) -> int:
        """Queued plus running jobs of ``stage``/``model``."""
        ...

    async def queue_stats(self, stage: keys.Stage, model: str) -> QueueStats:
        """Queued and running (delivered, unacknowledged) jobs of ``stage``/``model``, apart."""
        ...


class RedisBackend:
    """:class:`Backend` over the Redis transport (``workers.transport``)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @classmethod
    def connect(
        cls, redis: RedisSettings, queue: QueueSettings, replica_id: str | None = None
    ) -> RedisBackend:
        """A backend on its own connection pool."""
        return cls(Transport.connect(redis, queue, replica_id))

    @property
    def reply_to(self) -> str:
        return self.transport.reply_to

    @property
    def blobs(self) -> Blobs:
        return self.transport.blobs

    @property
    def connected(self) -> bool:
        return self.transport.reader.connected

    @property
    def last_outage(self) -> tuple[float, float] | None:
        return self.transport.reader.last_outage

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        await self.transport.close()

    async def submit(self, job: Job) -> EventStream:
        return await self.transport.submit(job)

    async def cancel(self, job_id: str) -> None:
        await self.transport.cancel(job_id)

    async def ping(self) -> bool:
        return await self.transport.ping()

    async def live_workers(self) -> list[WorkerInfo]:
        return await self.transport.workers.list_workers()

    async def queue_load(self, stage: keys.Stage, model: str) -> int:
        stats = await self.queue_stats(stage, model)
        return stats.queued + stats.running

    async def queue_stats(self, stage: keys.Stage, model: str) -> QueueStats:
        return await self.transport.queue.stats(keys.job_stream(stage, model))
