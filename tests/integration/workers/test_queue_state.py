"""What operators and the gateway read: queue depth and lag, live workers, bounded streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from tests.integration.workers.helpers import (
    MODEL,
    chat_job,
    gateway,
    next_event,
    run_burst,
    running_worker,
)
from workers import keys
from workers.consumer import StreamConsumer
from workers.handler import JobContext
from workers.heartbeat import WorkerRegistry
from workers.protocol import Event, Job, TextDelta, WorkerInfo
from workers.queue import JobQueue, QueueStats, repair_lag, trim_acknowledged
from workers.settings import QueueSettings, RedisSettings

STREAM = keys.job_stream("llm", MODEL)
REPLY_TO = keys.reply_stream("gw-test")


async def test_depth_and_lag(redis: Redis, queue_settings: QueueSettings) -> None:
    queue = JobQueue(redis, queue_settings)
    assert await queue.stats(STREAM) == QueueStats(STREAM, 0, 0, 0, 0, 0.0)
    for _ in range(3):
        await queue.enqueue(chat_job(REPLY_TO))
    await asyncio.sleep(0.05)
    stats = await queue.stats(STREAM)
    assert (stats.queued, stats.running, stats.length) == (3, 0, 3)
    assert stats.oldest_queued_age_s >= 0.04
    consumer = StreamConsumer(redis, queue_settings, STREAM, "w1")
    assert len(await consumer.read(1, None)) == 1
    stats = await queue.stats(STREAM)
    assert (stats.queued, stats.running, stats.consumers) == (2, 1, 1)
    assert await queue.streams() == [STREAM]


async def test_a_stale_lag_counter_is_not_a_full_queue(
    redis: Redis, queue_settings: QueueSettings
) -> None:
    """After a Sentinel failover the new master's ``entries-read`` of the group can be stale
    (seen with Redis 7.0: lag 343 on an empty stream), and admission read that counter as 343
    queued jobs: every request got 429 "queue full", and nothing could be enqueued to move the
    counter. Made here with ``XGROUP SETID ... ENTRIESREAD``: the depth is bounded by the
    entries the stream holds, so the queue reads empty and takes jobs."""
    settings = queue_settings.model_copy(update={"max_queue_depth": 5})
    queue = JobQueue(redis, settings)
    consumer = StreamConsumer(redis, settings, STREAM, "w1")
    for _ in range(4):
        await queue.enqueue(chat_job(REPLY_TO))
    for delivery in await consumer.read(4, None):
        await redis.xack(STREAM, keys.WORKER_GROUP, delivery.entry_id)
    await trim_acknowledged(redis, STREAM, approximate=False)
    await redis.execute_command("XGROUP", "SETID", STREAM, keys.WORKER_GROUP, "$", "ENTRIESREAD", 0)
    group = (await redis.xinfo_groups(STREAM))[0]
    assert (await redis.xlen(STREAM), group["lag"]) == (0, 4)  # the stale counter
    stats = await queue.stats(STREAM)
    assert (stats.queued, stats.running) == (0, 0)
    assert await repair_lag(redis, STREAM) == 0  # the counter of an empty stream
    await redis.execute_command("XGROUP", "SETID", STREAM, keys.WORKER_GROUP, "$", "ENTRIESREAD", 0)
    for _ in range(5):  # the bound is 5: all fit, none is refused as "full (4 jobs)"
        await queue.enqueue(chat_job(REPLY_TO))
    assert (await queue.stats(STREAM)).queued == 5
    # the counter itself (what KEDA's lagCount reads) is repaired by the workers' trim
    assert (await redis.xinfo_groups(STREAM))[0]["lag"] == 9
    await consumer.trim()
    assert (await redis.xinfo_groups(STREAM))[0]["lag"] == 5
    assert await repair_lag(redis, STREAM) is None  # right now: left alone


async def test_trimming_never_drops_pending_or_queued_jobs(
    redis: Redis, queue_settings: QueueSettings
) -> None:
    queue = JobQueue(redis, queue_settings)
    ids = [(await queue.enqueue(chat_job(REPLY_TO))).entry_id for _ in range(10)]
    consumer = StreamConsumer(redis, queue_settings, STREAM, "w1")
    delivered = await consumer.read(6, None)
    for delivery in delivered[:2] + delivered[3:4]:  # ack 1, 2 and 4: 3, 5, 6 stay pending
        await redis.xack(STREAM, keys.WORKER_GROUP, delivery.entry_id)
    assert await trim_acknowledged(redis, STREAM, approximate=False) == 2
    kept = [entry_id.decode() for entry_id, _ in await redis.xrange(STREAM)]
    assert kept == ids[2:]  # from the oldest pending (3rd) on: pending 3, 5, 6 and queued 7-10
    for delivery in delivered:
        await redis.xack(STREAM, keys.WORKER_GROUP, delivery.entry_id)
    assert await trim_acknowledged(redis, STREAM, approximate=False) == 4
    assert [e.decode() for e, _ in await redis.xrange(STREAM)] == ids[6:]
    assert len(await consumer.read(10, None)) == 4  # the queued jobs are all still delivered


async def test_trimming_a_stream_without_group_or_deliveries_is_a_no_op(
    redis: Redis, queue_settings: QueueSettings
) -> None:
    assert await trim_acknowledged(redis, STREAM) == 0
    await JobQueue(redis, queue_settings).enqueue(chat_job(REPLY_TO))
    assert await trim_acknowledged(redis, STREAM, approximate=False) == 0
    assert await redis.xlen(STREAM) == 1


async def test_workers_publish_heartbeats(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    registry = WorkerRegistry(redis, queue_settings)
    release = asyncio.Event()

    async def blocked(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="working")
        await release.wait()

    async with gateway(redis_settings, queue_settings) as gw:
        events = await gw.submit(chat_job(gw.reply_to))
        async with running_worker(redis_settings, queue_settings, blocked, capacity=3) as worker:
            await next_event(events)
            await next_event(events)
            await asyncio.sleep(queue_settings.heartbeat_interval_s * 2)
            (info,) = await registry.list_workers(stage="llm", model=MODEL)
            assert (info.worker_id, info.capacity, info.load) == (worker.worker_id, 3, 1)
            assert await registry.list_workers(stage="diffusion") == []
            assert await registry.list_workers(model="other") == []
            assert await registry.is_alive(worker.worker_id)
            release.set()
        assert await registry.list_workers() == []  # a clean stop deregisters at once


async def test_dead_workers_drop_out_of_the_listing(
    redis: Redis, queue_settings: QueueSettings
) -> None:
    registry = WorkerRegistry(redis, queue_settings)
    now = time.time()
    info = WorkerInfo(
        worker_id="gone",
        stage="diffusion",
        model="m",
        capacity=1,
        load=0,
        host="h",
        pid=1,
        started_at=now,
        heartbeat_at=now,
    )
    await registry.publish(info)
    assert await registry.list_workers() == [info]
    await redis.delete(keys.worker_key("gone"))  # what the TTL does to a killed worker
    assert await registry.list_workers() == []
    assert await redis.zcard(keys.WORKER_INDEX) == 0


async def test_burst_worker_drains_and_trims(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    queue = JobQueue(redis, queue_settings)
    for _ in range(5):
        await queue.enqueue(chat_job(REPLY_TO))

    async def quick(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="x")

    worker = await run_burst(redis_settings, queue_settings, quick, capacity=2)
    assert worker.processed == 5
    stats = await queue.stats(STREAM)
    assert (stats.queued, stats.running, stats.consumers) == (0, 0, 0)
    await queue.enqueue(chat_job(REPLY_TO))
    worker = await run_burst(redis_settings, queue_settings, quick)  # trims on its first pass
    assert await redis.xlen(STREAM) <= 2
