"""``seedx_queue_load`` against a real Redis: queued and delivered-but-unacknowledged jobs count,
acknowledged history does not, and the denominator is the live workers' heartbeat capacity."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from server import fleet
from server.backend import RedisBackend
from tests.integration.workers.helpers import MODEL, chat_job
from workers import keys
from workers.consumer import StreamConsumer
from workers.heartbeat import WorkerRegistry
from workers.protocol import WorkerInfo
from workers.queue import JobQueue
from workers.settings import QueueSettings, RedisSettings

STREAM = keys.job_stream("llm", MODEL)
REPLY_TO = keys.reply_stream("gw-load")


async def queue_acked_pending_queued(redis: Redis, settings: QueueSettings) -> None:
    """10 jobs: 6 delivered by XREADGROUP, 2 of those acknowledged; 4 pending, 4 queued."""
    queue = JobQueue(redis, settings)
    for _ in range(10):
        await queue.enqueue(chat_job(REPLY_TO))
    delivered = await StreamConsumer(redis, settings, STREAM, "w1").read(6, None)
    assert len(delivered) == 6
    for delivery in delivered[:2]:
        await redis.xack(STREAM, keys.WORKER_GROUP, delivery.entry_id)


def heartbeat(worker_id: str, capacity: int) -> WorkerInfo:
    now = time.time()
    return WorkerInfo(
        worker_id=worker_id,
        stage="llm",
        model=MODEL,
        capacity=capacity,
        load=0,
        host="h",
        pid=1,
        started_at=now,
        heartbeat_at=now,
    )


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"stage": "llm", "model": MODEL, **labels})


async def test_load_counts_queued_and_pending_jobs_only(
    redis: Redis, queue_settings: QueueSettings
) -> None:
    await queue_acked_pending_queued(redis, queue_settings)
    stats = await JobQueue(redis, queue_settings).stats(STREAM)
    assert (stats.queued, stats.running, stats.length) == (4, 4, 10)  # acked entries kept
    assert fleet.queue_load(stats, capacity=8) == 1.0
    assert fleet.queue_load(stats, capacity=16) == 0.5
    assert fleet.queue_load(stats, capacity=0) == 8.0  # no live worker: the job count


@pytest.fixture
async def backend(
    redis_settings: RedisSettings, queue_settings: QueueSettings
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend.connect(redis_settings, queue_settings)
    try:
        yield backend
    finally:
        await backend.close()


async def test_the_gateway_exports_load_counts_and_capacity(
    redis: Redis, queue_settings: QueueSettings, backend: RedisBackend
) -> None:
    await queue_acked_pending_queued(redis, queue_settings)
    registry = WorkerRegistry(redis, queue_settings.model_copy(update={"lease_s": 60.0}))
    await registry.publish(heartbeat("a", capacity=3))
    await registry.publish(heartbeat("b", capacity=1))
    await fleet.refresh(backend, timeout_s=30)  # a hang guard only
    assert REGISTRY.get_sample_value("seedx_fleet_refresh_failed") == 0
    assert sample("seedx_fleet_live_workers") == 2
    assert sample("seedx_fleet_capacity_jobs") == 4
    assert sample("seedx_fleet_jobs", state="queued") == 4
    assert sample("seedx_fleet_jobs", state="running") == 4
    assert sample("seedx_fleet_queue_jobs") == 8
    assert sample("seedx_queue_load") == 2.0  # 8 jobs on 4 slots: twice what the workers take

    await registry.remove("a")
    await registry.remove("b")
    await fleet.refresh(backend, timeout_s=30)
    assert sample("seedx_fleet_live_workers") == 0
    assert sample("seedx_queue_load") == 8.0  # what wakes a stage scaled to zero
