"""A job the job store lost (a failover to a lagging replica) is enqueued again by the gateway.

Real Redis, the real transport and worker loop: the job's stream entry and its per-job enqueue
record are deleted behind the gateway's back, as if the write never reached the replica that
became master. The gateway's lost-job watch finds it missing on two looks a lease apart,
enqueues it again under the same job id, and the waiter gets exactly one answer, equal to an
uninterrupted one. A job whose entry is there is never enqueued twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from tests.integration.workers.helpers import (
    chat_job,
    collect,
    gateway,
    running_worker,
    summary,
)
from workers import keys, lost_jobs
from workers.handler import JobContext
from workers.protocol import Event, Job, Reply, TextDelta
from workers.settings import QueueSettings, RedisSettings


async def three_words(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    for word in ("one ", "two ", "three"):
        yield TextDelta(text=word)


def text(replies: list[Reply]) -> str:
    return "".join(r.event.text for r in replies if isinstance(r.event, TextDelta))


async def test_a_vanished_job_is_enqueued_again_and_answers_once(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    before = lost_jobs.LOST_JOBS_REENQUEUED._value.get()
    async with gateway(redis_settings, queue_settings) as transport:
        job = chat_job(transport.reply_to, deadline_s=30)
        subscription = await transport.submit(job)
        entry_id = subscription.entry_id
        assert entry_id is not None
        # The failover: the replica never got the enqueue script's writes.
        assert await redis.xdel(job.stream, entry_id) == 1
        assert await redis.delete(keys.job_idempotency_key(job.job_id)) == 1
        await asyncio.sleep(queue_settings.lease_s * 2.5)  # two looks a lease apart
        assert lost_jobs.LOST_JOBS_REENQUEUED._value.get() == before + 1
        assert subscription.entry_id != entry_id
        async with running_worker(redis_settings, queue_settings, three_words):
            replies = await collect(subscription)
    types = [kind for _, kind in summary(replies)]
    assert types == ["started", "text.delta", "text.delta", "text.delta", "done"]
    assert text(replies) == "one two three"
    assert await redis.xlen(job.stream) <= 1  # the one re-enqueued entry (or trimmed once acked)


async def test_a_job_still_in_its_stream_is_left_alone(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    before = lost_jobs.LOST_JOBS_REENQUEUED._value.get()
    async with gateway(redis_settings, queue_settings) as transport:
        job = chat_job(transport.reply_to, deadline_s=30)
        subscription = await transport.submit(job)
        await asyncio.sleep(queue_settings.lease_s * 3)  # nobody runs it: it waits in its stream
        assert lost_jobs.LOST_JOBS_REENQUEUED._value.get() == before
        assert await redis.xlen(job.stream) == 1
        async with running_worker(redis_settings, queue_settings, three_words):
            replies = await collect(subscription)
    assert text(replies) == "one two three"
