"""The worker's pipelined event appends: order per job, coalescing, errors to their job."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tests.integration.conftest import PrivateValkey, fast_redis_settings
from workers.connection import CONNECTION_ERRORS, create_redis
from workers.protocol import TextDelta, parse_reply
from workers.replies import REPLY_FIELD, ReplyBatcher, ReplyWriter
from workers.settings import QueueSettings

STREAM = "seedx:replies:batch-test"


def writer(redis: Redis, settings: QueueSettings, job: str, batcher: ReplyBatcher) -> ReplyWriter:
    return ReplyWriter(
        redis,
        settings,
        reply_to=STREAM,
        job_id=job,
        request_id=job,
        trace_id=job,
        attempt=1,
        batcher=batcher,
    )


async def test_concurrent_jobs_keep_their_order_in_few_round_trips(
    redis: Redis, queue_settings: QueueSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = ReplyBatcher(redis)
    round_trips = 0
    send, xadd = batcher._send, redis.xadd

    async def counting_send(batch):  # type: ignore[no-untyped-def]
        nonlocal round_trips
        round_trips += 1
        await send(batch)

    async def counting_xadd(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal round_trips
        round_trips += 1
        return await xadd(*args, **kwargs)

    monkeypatch.setattr(batcher, "_send", counting_send)
    monkeypatch.setattr(redis, "xadd", counting_xadd)
    jobs, per_job = 32, 20

    async def produce(job: str) -> None:
        w = writer(redis, queue_settings, job, batcher)
        for i in range(per_job):
            await w.emit(TextDelta(text=f"{job}:{i}"))

    await asyncio.gather(*(produce(f"job{j}") for j in range(jobs)))
    entries = await redis.xrange(STREAM)
    assert len(entries) == jobs * per_job
    seen: dict[str, list[int]] = {}
    for _id, fields in entries:
        reply = parse_reply(fields[REPLY_FIELD])
        seen.setdefault(reply.job_id, []).append(reply.seq)  # type: ignore[union-attr]
    assert all(seqs == list(range(per_job)) for seqs in seen.values())
    # a few round trips per "step" of all 32 jobs (a lone append, then the queued ones), not 32
    assert round_trips <= 4 * per_job, round_trips


async def test_a_lost_connection_fails_every_waiting_append(
    private_valkey: PrivateValkey, queue_settings: QueueSettings
) -> None:
    redis = create_redis(fast_redis_settings(private_valkey.url))
    batcher = ReplyBatcher(redis)
    try:
        await writer(redis, queue_settings, "a", batcher).emit(TextDelta(text="ok"))
        await asyncio.to_thread(private_valkey.stop)
        results = await asyncio.gather(
            *(writer(redis, queue_settings, j, batcher).emit(TextDelta(text="x")) for j in "bcd"),
            return_exceptions=True,
        )
        assert all(isinstance(r, CONNECTION_ERRORS) for r in results), results
        await asyncio.to_thread(private_valkey.start)
        await writer(redis, queue_settings, "e", batcher).emit(TextDelta(text="back"))
    finally:
        await redis.aclose()
