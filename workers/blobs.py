"""Binary blobs in Redis: input images, visual embeddings, output images.

Jobs and events carry :class:`workers.protocol.BlobRef` keys, never bytes. Every blob has a TTL so
a crashed request cannot leak memory, and may be owned by a request (``owner=request_id``) so
the gateway frees everything the request produced with one :meth:`BlobStore.release` when it
completes. Tensors are stored as raw little-endian bytes (no pickle, no torch) with dtype, shape
and a CRC32 in the reference; :meth:`BlobStore.get_tensor` refuses bytes that do not match.

Through a Sentinel-managed Redis a store also waits (``WAIT 1``, at most
:data:`REPLICA_WAIT_MS`) until a replica holds the blob: the event that points to it is written
after it, and a gateway may read that event from the master just before the master dies; the
replica promoted in its place must then hold the blob too, or the answer is lost although its
event arrived (found by the failover test: an image request answered 500 blob_missing). If the
master dies during the wait, the store fails like any write to a dead Redis and the job is
re-run. Jobs and events need no such wait: a lost job is enqueued again and a lost event re-run
(see :mod:`workers.lost_jobs`). Without any replica the wait ends at its timeout (each blob store
of a master left alone after a failover takes that long: keep two replicas).

A store Redis refuses for want of memory (``maxmemory``, noeviction) raises
:class:`~workers.errors.StoreFull` at once on the gateway (a 503 at admission); a worker's store
for a job (:meth:`BlobStore.until` the job's deadline) retries with backoff until then.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, get_args

import numpy as np
from numpy.typing import NDArray
from redis.asyncio import Redis

from workers import keys
from workers.connection import SentinelMasterRedis, retry_while_full, unavailable_on_disconnect
from workers.errors import BlobCorrupt, BlobMissing
from workers.protocol import BlobRef, TensorDType, new_id
from workers.settings import QueueSettings

logger = logging.getLogger(__name__)

_TENSOR_DTYPES: frozenset[str] = frozenset(get_args(TensorDType))

REPLICA_WAIT_MS = 1500
"""The longest a blob store waits for a replica's acknowledgement: above the second a replica
takes to reconnect after its link dropped (its replication tick), so a blob written meanwhile is
acknowledged once it has it rather than let through unreplicated."""


def checksum(data: bytes | memoryview) -> str:
    """The checksum recorded in a BlobRef (CRC32: ~0.1 ms for a 512 KiB embedding)."""
    return f"crc32:{zlib.crc32(data):08x}"


def _ttl_ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))


class BlobStore:
    """Put and get blobs with a TTL; verifies size and checksum on every read."""

    def __init__(
        self, redis: Redis, settings: QueueSettings, *, deadline: float | None = None
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._deadline = deadline

    def until(self, deadline: float) -> BlobStore:
        """This store for one job: a store refused because Redis is full is retried with
        backoff until ``deadline`` (epoch seconds), then fails with StoreFull."""
        return BlobStore(self._redis, self._settings, deadline=deadline)

    async def put(
        self,
        data: bytes,
        *,
        content_type: str | None = None,
        owner: str | None = None,
        ttl_s: float | None = None,
    ) -> BlobRef:
        """Store ``data``; the blob expires after ``ttl_s`` (default ``blob_ttl_s``)."""
        ref = BlobRef(
            key=keys.blob_key(new_id()),
            nbytes=len(data),
            content_type=content_type,
            checksum=checksum(data),
        )
        await self._store(ref, data, owner, ttl_s)
        return ref

    async def put_tensor(
        self, array: NDArray[np.generic], *, owner: str | None = None, ttl_s: float | None = None
    ) -> BlobRef:
        """Store a tensor as raw little-endian bytes, recording dtype, shape and checksum."""
        dtype_name = array.dtype.name
        if dtype_name not in _TENSOR_DTYPES:
            raise ValueError(f"unsupported tensor dtype {dtype_name!r}")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        dtype: TensorDType = dtype_name  # type: ignore[assignment]  # checked just above
        ref = BlobRef(
            key=keys.blob_key(new_id()),
            nbytes=len(data),
            content_type="application/x-seedx-tensor",
            dtype=dtype,
            shape=tuple(int(dim) for dim in array.shape),
            checksum=checksum(data),
        )
        await self._store(ref, data, owner, ttl_s)
        return ref

    async def get(self, ref: BlobRef) -> bytes:
        """The blob's bytes; raises BlobMissing (expired/released) or BlobCorrupt (mismatch)."""
        async with unavailable_on_disconnect("reading a blob"):
            data: Any = await self._redis.get(ref.key)
        if data is None:
            raise BlobMissing(f"blob {ref.key} does not exist (expired or released)")
        blob = bytes(data)
        self._verify(ref, blob)
        return blob

    async def get_tensor(self, ref: BlobRef) -> NDArray[np.generic]:
        """The tensor of a tensor blob, as a read-only array of the recorded dtype and shape."""
        if ref.dtype is None or ref.shape is None:
            raise BlobCorrupt(f"blob {ref.key} is not a tensor blob (no dtype/shape)")
        data = await self.get(ref)
        dtype = np.dtype(ref.dtype).newbyteorder("<")
        expected = int(np.prod(ref.shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise BlobCorrupt(
                f"blob {ref.key} holds {len(data)} bytes, expected {expected} for "
                f"{ref.dtype}{list(ref.shape)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(ref.shape)

    async def delete(self, *refs: BlobRef) -> int:
        """Delete blobs now (rather than at their TTL); returns how many existed."""
        if not refs:
            return 0
        async with unavailable_on_disconnect("deleting blobs"):
            deleted: int = await self._redis.delete(*(ref.key for ref in refs))
        return deleted

    async def release(self, owner: str) -> int:
        """Delete every blob ``owner`` (a request id) owns; returns how many existed."""
        owner_key = keys.blob_owner_key(owner)
        async with unavailable_on_disconnect("releasing blobs"):
            members: set[Any] = await self._redis.smembers(owner_key)
            deleted: int = await self._redis.delete(owner_key, *members)
        return max(0, deleted - 1) if members else 0

    async def _store(
        self, ref: BlobRef, data: bytes, owner: str | None, ttl_s: float | None
    ) -> None:
        ttl_ms = _ttl_ms(ttl_s if ttl_s is not None else self._settings.blob_ttl_s)
        if self._deadline is None:
            await self._store_once(ref, data, owner, ttl_ms)
            return
        await retry_while_full(
            lambda: self._store_once(ref, data, owner, ttl_ms),
            deadline=self._deadline,
            action="storing a blob",
            backoff_cap_s=self._settings.reconnect_backoff_cap_s,
        )

    async def _store_once(self, ref: BlobRef, data: bytes, owner: str | None, ttl_ms: int) -> None:
        async with unavailable_on_disconnect("storing a blob"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(ref.key, data, px=ttl_ms)
            if owner is not None:
                owner_key = keys.blob_owner_key(owner)
                pipe.sadd(owner_key, ref.key)
                pipe.pexpire(owner_key, ttl_ms, gt=True)
                pipe.pexpire(owner_key, ttl_ms, nx=True)
            if isinstance(self._redis, SentinelMasterRedis):
                pipe.wait(1, REPLICA_WAIT_MS)
            await pipe.execute()

    @staticmethod
    def _verify(ref: BlobRef, data: bytes) -> None:
        if ref.nbytes is not None and len(data) != ref.nbytes:
            raise BlobCorrupt(f"blob {ref.key} holds {len(data)} bytes, expected {ref.nbytes}")
        if ref.checksum is not None and checksum(data) != ref.checksum:
            raise BlobCorrupt(f"blob {ref.key} checksum mismatch (expected {ref.checksum})")
