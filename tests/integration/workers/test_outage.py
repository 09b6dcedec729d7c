"""Redis going away: callers get their result or Unavailable, never a hang; nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.integration.conftest import PrivateValkey, fast_queue_settings, fast_redis_settings
from tests.integration.workers.helpers import (
    chat_job,
    collect,
    free_port_url,
    gateway,
    next_event,
    running_worker,
)
from workers import keys
from workers.errors import Unavailable
from workers.handler import JobContext
from workers.protocol import Event, Job, TextDelta, WorkerInfo
from workers.replies import ReplyWriter
from workers.settings import QueueSettings
from workers.transport import Transport


async def test_unreachable_redis_is_unavailable_quickly(queue_settings: QueueSettings) -> None:
    settings = fast_redis_settings(free_port_url())
    async with gateway(settings, queue_settings) as gw:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await gw.submit(chat_job(gw.reply_to))
        with pytest.raises(Unavailable):
            await gw.blobs.put(b"x")
        assert gw.reader.waiting == 0
        assert not await gw.ping()
    assert time.monotonic() - started < 5


async def _kill_connections(admin: Redis, client_name: str) -> int:
    killed = 0
    for client in await admin.client_list():
        if client.get("name") == client_name:
            await admin.client_kill_filter(_id=client["id"])
            killed += 1
    return killed


async def test_reply_reader_reconnect_loses_no_event(
    redis: Redis, redis_url: str, queue_settings: QueueSettings
) -> None:
    """Kill the reader's connection repeatedly while 3000 events stream in; all arrive, in order."""
    name = "seedx-test-reader"
    reader_settings = fast_redis_settings(redis_url, client_name=name, retry_attempts=0)
    total = 3000
    async with gateway(reader_settings, queue_settings) as gw:
        job = chat_job(gw.reply_to)
        events = gw.reader.subscribe(job.job_id, job.deadline)
        writer = ReplyWriter(
            redis,
            queue_settings,
            reply_to=gw.reply_to,
            job_id=job.job_id,
            request_id=job.request_id,
            trace_id="",
            attempt=1,
        )

        async def produce() -> None:
            for i in range(total):
                await writer.emit(TextDelta(text=f"{i},"))
                if i % 500 == 250:
                    assert await _kill_connections(redis, name) >= 1
                    await asyncio.sleep(0.05)

        producer = asyncio.create_task(produce())
        received: list[str] = []
        while len(received) < total:
            reply = await next_event(events, timeout=10)
            assert isinstance(reply.event, TextDelta)
            received.append(reply.event.text)
        await producer
        assert received == [f"{i}," for i in range(total)]
        outage = gw.reader.last_outage  # what the gateway's worker directory reads
        assert outage is not None
        assert outage[0] <= outage[1] <= time.monotonic()


async def test_reader_reads_on_when_redis_forgets_the_stream(
    redis: Redis, redis_url: str, queue_settings: QueueSettings
) -> None:
    name = "seedx-test-forgetful"
    reader_settings = fast_redis_settings(redis_url, client_name=name, retry_attempts=0)
    async with gateway(reader_settings, queue_settings) as gw:
        job = chat_job(gw.reply_to)
        events = gw.reader.subscribe(job.job_id, job.deadline)
        writer = ReplyWriter(
            redis,
            queue_settings,
            reply_to=gw.reply_to,
            job_id=job.job_id,
            request_id=job.request_id,
            trace_id="",
            attempt=1,
        )
        await writer.emit(TextDelta(text="before the flush"))
        await next_event(events)
        await redis.flushdb()  # what a restart without persistence looks like
        await _kill_connections(redis, name)
        # The waiter is not ended (its job is re-run by reclaim or workers.lost_jobs): what is
        # appended to the stream Redis now holds reaches it.
        await writer.emit(TextDelta(text="after the flush"))
        reply = await next_event(events)
        assert isinstance(reply.event, TextDelta)
        assert reply.event.text == "after the flush"


async def test_redis_restart_under_load(private_valkey: PrivateValkey) -> None:
    """Stop Redis for ~1 s while 40 requests flow: every caller ends (result or Unavailable)
    in bounded time, and every job whose enqueue succeeded is processed once Redis is back."""
    redis_settings = fast_redis_settings(private_valkey.url)
    settings = fast_queue_settings(reply_outage_s=10.0)
    processed: set[str] = set()
    accepted: set[str] = set()

    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        await asyncio.sleep(0.05)
        yield TextDelta(text="ok")
        processed.add(job.job_id)

    async def caller(gw: Transport) -> str:
        job = chat_job(gw.reply_to, deadline_s=30)
        try:
            events = await gw.submit(job)
            accepted.add(job.job_id)
            replies = await collect(events, timeout=40)
        except Unavailable:
            return "unavailable"
        return replies[-1].event.type

    async def restart_redis() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(private_valkey.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_valkey.start)

    async with (
        gateway(redis_settings, settings) as gw,
        running_worker(redis_settings, settings, handler, capacity=4),
    ):
        restart = asyncio.create_task(restart_redis())
        callers = []
        for _ in range(40):
            callers.append(asyncio.create_task(caller(gw)))
            await asyncio.sleep(0.05)
        await restart
        outcomes = await asyncio.wait_for(asyncio.gather(*callers), timeout=60)
        assert set(outcomes) <= {"done", "unavailable"}, outcomes
        assert outcomes.count("done") >= 10
        assert outcomes.count("unavailable") >= 1
        deadline = time.monotonic() + 20
        while not accepted <= processed and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert accepted <= processed, accepted - processed


async def test_a_worker_heartbeats_again_soon_after_redis_returns(
    private_valkey: PrivateValkey,
) -> None:
    """Its heartbeat failed during the outage: the next try comes after the reconnect backoff,
    not a whole heartbeat interval later (until then the gateway sees no worker for its model,
    and its running jobs' leases may lapse)."""
    redis_settings = fast_redis_settings(private_valkey.url)
    settings = fast_queue_settings(heartbeat_interval_s=3.0, lease_s=10.0)

    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="ok")

    admin = Redis.from_url(private_valkey.url)

    async def heartbeat_at(worker_id: str) -> float:
        raw = await admin.get(keys.worker_key(worker_id))
        return WorkerInfo.model_validate_json(raw).heartbeat_at if raw else 0.0

    try:
        async with running_worker(redis_settings, settings, handler) as worker:
            await asyncio.sleep(0.3)
            before = await heartbeat_at(worker.worker_id)  # the first heartbeat
            assert before > 0
            await admin.aclose()  # its connection dies with the server
            await asyncio.to_thread(private_valkey.stop)
            await asyncio.sleep(3.5)  # the heartbeat due in this window fails
            back = time.monotonic()
            await asyncio.to_thread(private_valkey.start)
            while await heartbeat_at(worker.worker_id) <= before:
                assert time.monotonic() - back < 4.0, "no heartbeat since Redis came back"
                await asyncio.sleep(0.05)
            # start + the backoff (cap 0.2 s), not the 3 s interval
            assert time.monotonic() - back < 1.0
    finally:
        await admin.aclose()


async def test_a_job_cut_off_by_an_outage_runs_again_soon_not_a_lease_later(
    private_valkey: PrivateValkey,
) -> None:
    """Redis goes away while a job streams: its worker cannot write the job's events and
    abandons that attempt, then hands the job back as soon as Redis answers, so it runs again
    at once (new attempt, deduplicated by the gateway) instead of after its 30 s lease; what a
    failover or a Redis restart costs a request in flight is the outage, not a lease."""
    redis_settings = fast_redis_settings(private_valkey.url)
    settings = fast_queue_settings(
        lease_s=30.0, reclaim_interval_s=30.0, reply_outage_s=20.0, max_deliveries=3
    )
    attempts: list[int] = []

    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        attempts.append(ctx.attempt)
        for index in range(20):
            await asyncio.sleep(0.1)
            yield TextDelta(text=f"w{index} ")

    async with (
        gateway(redis_settings, settings) as gw,
        running_worker(redis_settings, settings, handler),
    ):
        events = await gw.submit(chat_job(gw.reply_to, deadline_s=60))
        first = await next_event(events, timeout=10)  # Started: the first attempt runs
        assert first.event.type == "started"
        await asyncio.to_thread(private_valkey.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_valkey.start)
        back = time.monotonic()
        replies = [first, *await collect(events, timeout=60)]
        answered_s = time.monotonic() - back
    text = "".join(r.event.text for r in replies if isinstance(r.event, TextDelta))
    assert text == "".join(f"w{index} " for index in range(20))
    assert replies[-1].event.type == "done"
    assert len(attempts) == 2, attempts
    assert answered_s < settings.lease_s / 2, answered_s  # the lease did not have to run out


async def test_a_blob_step_cut_off_by_an_outage_is_rerun_not_failed(
    redis: Redis, redis_url: str
) -> None:
    """A handler's own Redis step (storing its image blob) met the outage and raised
    Unavailable: that is no answer to give the client (a 503 for an accepted request, seen in
    a Sentinel failover), but an attempt to hand back: the job runs again and answers."""
    redis_settings = fast_redis_settings(redis_url)
    settings = fast_queue_settings(lease_s=30.0, reclaim_interval_s=30.0, max_deliveries=3)
    attempts: list[int] = []

    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        attempts.append(ctx.attempt)
        yield TextDelta(text="partial ")
        if ctx.attempt == 1:
            raise Unavailable("the job store is unreachable while storing a blob; retry later")
        yield TextDelta(text="whole")

    async with (
        gateway(redis_settings, settings) as gw,
        running_worker(redis_settings, settings, handler),
    ):
        events = await gw.submit(chat_job(gw.reply_to, deadline_s=60))
        replies = await collect(events, timeout=20)  # a lease (30 s) would exceed this
    text = "".join(r.event.text for r in replies if isinstance(r.event, TextDelta))
    assert (text, replies[-1].event.type, attempts) == ("partial whole", "done", [1, 2])
