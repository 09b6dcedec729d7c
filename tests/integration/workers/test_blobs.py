"""Blobs: bytes and tensors with TTL, verified on read, released with their request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from redis.asyncio import Redis

from workers.blobs import BlobStore
from workers.errors import BlobCorrupt, BlobMissing
from workers.settings import QueueSettings


@pytest.fixture
def blobs(redis: Redis, queue_settings: QueueSettings) -> BlobStore:
    return BlobStore(redis, queue_settings)


async def test_bytes_round_trip(blobs: BlobStore) -> None:
    ref = await blobs.put(b"\x89PNG...", content_type="image/png")
    assert (ref.nbytes, ref.content_type, ref.is_tensor) == (7, "image/png", False)
    assert await blobs.get(ref) == b"\x89PNG..."


@pytest.mark.parametrize("dtype", ["float16", "float32", "uint8", "int64", "bool"])
async def test_tensor_round_trip(blobs: BlobStore, dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((64, 4096)) * 10).astype(dtype)
    ref = await blobs.put_tensor(array)
    assert (ref.dtype, ref.shape, ref.nbytes) == (dtype, (64, 4096), array.nbytes)
    back = await blobs.get_tensor(ref)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


async def test_big_endian_input_is_stored_little_endian(blobs: BlobStore, redis: Redis) -> None:
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    ref = await blobs.put_tensor(array)
    assert await redis.get(ref.key) == array.astype("<f4").tobytes()
    np.testing.assert_array_equal(await blobs.get_tensor(ref), array)


async def test_corruption_is_detected(blobs: BlobStore, redis: Redis) -> None:
    ref = await blobs.put_tensor(np.ones((4, 4), dtype=np.float16))
    await redis.setrange(ref.key, 3, b"\x00")
    with pytest.raises(BlobCorrupt, match="checksum"):
        await blobs.get_tensor(ref)
    await redis.append(ref.key, b"extra")
    with pytest.raises(BlobCorrupt, match="bytes"):
        await blobs.get(ref)
    lying = ref.model_copy(update={"shape": (4, 5), "nbytes": None, "checksum": None})
    with pytest.raises(BlobCorrupt, match="expected"):
        await blobs.get_tensor(lying)


async def test_non_tensor_blob_is_not_read_as_tensor(blobs: BlobStore) -> None:
    with pytest.raises(BlobCorrupt, match="not a tensor"):
        await blobs.get_tensor(await blobs.put(b"abc"))


async def test_unsupported_dtype_is_refused(blobs: BlobStore) -> None:
    with pytest.raises(ValueError, match="complex64"):
        await blobs.put_tensor(np.zeros(2, dtype=np.complex64))


async def test_blobs_expire(blobs: BlobStore) -> None:
    ref = await blobs.put(b"short-lived", ttl_s=0.2)
    assert await blobs.get(ref) == b"short-lived"
    await asyncio.sleep(0.4)
    with pytest.raises(BlobMissing):
        await blobs.get(ref)


async def test_default_ttl_applies(blobs: BlobStore, redis: Redis) -> None:
    ref = await blobs.put(b"x")
    ttl_ms = await redis.pttl(ref.key)
    assert 0 < ttl_ms <= 3_600_000


async def test_release_deletes_everything_a_request_owns(blobs: BlobStore, redis: Redis) -> None:
    owned = [
        await blobs.put(b"input", owner="req-1"),
        await blobs.put_tensor(np.zeros((2, 2), dtype=np.float16), owner="req-1"),
    ]
    other = await blobs.put(b"other", owner="req-2")
    assert await blobs.release("req-1") == 2
    for ref in owned:
        with pytest.raises(BlobMissing):
            await blobs.get(ref)
    assert await blobs.get(other) == b"other"
    assert await blobs.release("req-1") == 0
    assert await blobs.delete(other) == 1
