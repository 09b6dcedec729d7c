"""At-least-once delivery, exactly-once results: crashes, long jobs, poison, cancel, deadlines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.integration.conftest import fast_queue_settings
from tests.integration.workers.helpers import (
    MODEL,
    chat_job,
    collect,
    gateway,
    next_event,
    run_burst,
    running_worker,
    summary,
)
from workers import keys
from workers.errors import DuplicateJob, Overloaded
from workers.handler import JobContext
from workers.protocol import Done, Event, Job, TextDelta, encode
from workers.queue import JOB_FIELD, ensure_group
from workers.settings import QueueSettings, RedisSettings

ROOT = Path(__file__).resolve().parents[3]
STREAM = keys.job_stream("llm", MODEL)


class Recorder:
    """A handler that records each run and emits ``texts`` then ends."""

    def __init__(self, *texts: str, sleep_s: float = 0.0) -> None:
        self.texts = texts
        self.sleep_s = sleep_s
        self.runs: list[tuple[str, int]] = []

    async def __call__(self, job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        self.runs.append((job.job_id, ctx.attempt))
        for text in self.texts:
            yield TextDelta(text=text)
        await asyncio.sleep(self.sleep_s)


@pytest.fixture
def spawn(redis_url: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start worker processes; kills any still alive at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start_worker_process(procs: list[subprocess.Popen[bytes]], url: str, mode: str) -> None:
    cmd = [sys.executable, "-m", "tests.integration.workers.worker_proc"]
    proc = subprocess.Popen(
        [*cmd, "--redis-url", url, "--mode", mode],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "worker process did not exit"
        await asyncio.sleep(0.05)
    return proc.returncode


async def pending_count(redis: Redis) -> int:
    summary_: dict[str, int] = await redis.xpending(STREAM, keys.WORKER_GROUP)
    return int(summary_["pending"])


async def test_sigkilled_worker_job_is_finished_once_by_another(
    redis: Redis,
    redis_url: str,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    async with gateway(redis_settings, queue_settings) as gw:
        events = await gw.submit(chat_job(gw.reply_to))
        start_worker_process(spawn, redis_url, "slow")
        first = [await next_event(events, 30), await next_event(events)]
        assert [(r.attempt, r.event) for r in first][1] == (1, TextDelta(text="a"))
        spawn[0].kill()  # SIGKILL mid-job: no cleanup, no ack, heartbeats stop
        assert await wait_exit(spawn[0]) == -9
        rescuer = Recorder("a", "b")
        async with running_worker(redis_settings, queue_settings, rescuer):
            rest = await collect(events)
        assert summary(rest) == [(2, "started"), (2, "text.delta"), (2, "done")]
        texts = [r.event.text for r in first + rest if isinstance(r.event, TextDelta)]
        assert "".join(texts) == "ab"  # the replayed "a" was dropped
        assert [attempt for _job, attempt in rescuer.runs] == [2]
        assert await pending_count(redis) == 0


async def test_long_job_with_live_heartbeat_is_never_reclaimed(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    long_job = Recorder("x", sleep_s=3 * queue_settings.lease_s)
    thief = Recorder("stolen")
    async with gateway(redis_settings, queue_settings) as gw:
        events = await gw.submit(chat_job(gw.reply_to))
        async with running_worker(redis_settings, queue_settings, long_job):
            await next_event(events)
            async with running_worker(redis_settings, queue_settings, thief):
                replies = await collect(events)
        assert summary(replies) == [(1, "text.delta"), (1, "done")]
        assert thief.runs == []
        assert len(long_job.runs) == 1


async def test_poison_job_is_dead_lettered_after_max_deliveries(
    redis: Redis,
    redis_url: str,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    assert queue_settings.max_deliveries == 2
    async with gateway(redis_settings, queue_settings) as gw:
        job = chat_job(gw.reply_to)
        events = await gw.submit(job)
        for _ in range(queue_settings.max_deliveries):
            start_worker_process(spawn, redis_url, "crash")
            assert await wait_exit(spawn[-1]) == -9
        survivor = Recorder("never")
        async with running_worker(redis_settings, queue_settings, survivor):
            replies = await collect(events)
        assert summary(replies) == [(1, "started"), (2, "started"), (3, "failed")]
        error = replies[-1].event.error  # type: ignore[union-attr]
        assert (error.code, error.retryable) == ("dead_lettered", False)
        assert survivor.runs == []
        (letter,) = await gw.queue.dead_letters()
        assert (letter.stream, letter.deliveries) == (STREAM, 3)
        assert json.loads(letter.job)["job_id"] == job.job_id
        assert await pending_count(redis) == 0


async def test_cancelled_while_queued_never_runs(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    handler = Recorder("x")
    async with gateway(redis_settings, queue_settings) as gw:
        cancelled = chat_job(gw.reply_to)
        kept = chat_job(gw.reply_to)
        cancelled_events = await gw.submit(cancelled)
        kept_events = await gw.submit(kept)
        await gw.cancel(cancelled.job_id)
        await run_burst(redis_settings, queue_settings, handler)
        replies = await collect(cancelled_events)
        assert summary(replies) == [(1, "failed")]
        assert replies[0].event.error.code == "cancelled"  # type: ignore[union-attr]
        assert summary(await collect(kept_events))[-1] == (1, "done")
        assert handler.runs == [(kept.job_id, 1)]


async def test_cancel_stops_a_running_job_between_steps(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    steps: list[int] = []

    async def stepper(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        for step in range(200):
            if ctx.stopped:
                return
            steps.append(step)
            yield TextDelta(text=str(step))
            await asyncio.sleep(0.02)

    async with gateway(redis_settings, queue_settings) as gw:
        job = chat_job(gw.reply_to)
        events = await gw.submit(job)
        async with running_worker(redis_settings, queue_settings, stepper):
            await next_event(events)  # started
            await next_event(events)  # first step
            await gw.cancel(job.job_id)
            replies = await collect(events, timeout=5)
        assert replies[-1].event.error.code == "cancelled"  # type: ignore[union-attr]
        assert len(steps) < 100


async def test_expired_deadline_never_runs(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    handler = Recorder("x")
    async with gateway(redis_settings, queue_settings) as gw:
        job = chat_job(gw.reply_to, deadline_s=-0.5)
        events = await gw.submit(job)
        await run_burst(redis_settings, queue_settings, handler)
        replies = await collect(events)
    assert summary(replies) == [(1, "failed")]
    assert replies[0].event.error.code == "deadline_exceeded"  # type: ignore[union-attr]
    assert handler.runs == []


async def test_deadline_passing_mid_job_stops_it(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    async def sleeper(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="begin")
        await asyncio.wait_for(ctx.stop_event.wait(), timeout=10)
        yield TextDelta(text="never forwarded")

    async with gateway(redis_settings, queue_settings) as gw:
        events = await gw.submit(chat_job(gw.reply_to, deadline_s=0.8))
        async with running_worker(redis_settings, queue_settings, sleeper):
            replies = await collect(events)
    assert summary(replies) == [(1, "started"), (1, "text.delta"), (1, "failed")]
    assert replies[-1].event.error.code == "deadline_exceeded"  # type: ignore[union-attr]


async def test_unknown_schema_version_fails_the_job_not_the_worker(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    handler = Recorder("ok")
    async with gateway(redis_settings, queue_settings) as gw:
        future = json.loads(encode(chat_job(gw.reply_to)))
        future.update(schema_version=2, tools=["from a newer gateway"])
        future_events = gw.reader.subscribe(future["job_id"], future["deadline"])
        await ensure_group(redis, STREAM)
        await redis.xadd(STREAM, {JOB_FIELD: json.dumps(future)})
        await redis.xadd(STREAM, {JOB_FIELD: b"\x00 garbage without a reply_to"})
        good_events = await gw.submit(chat_job(gw.reply_to))
        await run_burst(redis_settings, queue_settings, handler)
        failed = await collect(future_events)
        assert failed[-1].event.error.code == "unsupported_schema"  # type: ignore[union-attr]
        assert summary(await collect(good_events))[-1] == (1, "done")
        letters = await gw.queue.dead_letters()
        assert len(letters) == 2
        assert await pending_count(redis) == 0


async def test_handler_exception_becomes_failed_event(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    class EngineError(Exception):
        code = "invalid_prompt"
        param = "messages"

    async def broken(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="partial")
        raise EngineError("prompt has no image tokens")

    async def crashing(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        raise RuntimeError("secret internals")
        yield TextDelta(text="")

    async with gateway(redis_settings, queue_settings) as gw:
        first = await gw.submit(chat_job(gw.reply_to))
        await run_burst(redis_settings, queue_settings, broken)
        second = await gw.submit(chat_job(gw.reply_to))
        await run_burst(redis_settings, queue_settings, crashing)
        error = (await collect(first))[-1].event.error  # type: ignore[union-attr]
        assert (error.code, error.param) == ("invalid_prompt", "messages")
        error = (await collect(second))[-1].event.error  # type: ignore[union-attr]
        assert (error.code, error.message) == ("internal_error", "internal error in the worker")
        assert await pending_count(redis) == 0


async def test_handler_may_end_with_its_own_terminal_event(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    async def length_limited(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="truncated")
        yield Done(finish_reasons=("length",))
        yield TextDelta(text="ignored after the terminal event")

    async with gateway(redis_settings, queue_settings) as gw:
        events = await gw.submit(chat_job(gw.reply_to))
        await run_burst(redis_settings, queue_settings, length_limited)
        replies = await collect(events)
    assert replies[-1].event == Done(finish_reasons=("length",))
    assert len(replies) == 3


async def test_idempotency_key_yields_the_same_job(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    async with gateway(redis_settings, queue_settings) as gw:
        first = chat_job(gw.reply_to, idempotency_key="client-retry-1")
        second = chat_job(gw.reply_to, idempotency_key="client-retry-1")
        assert (await gw.queue.enqueue(first)).duplicate is False
        again = await gw.queue.enqueue(second)
        assert (again.job_id, again.duplicate) == (first.job_id, True)
        with pytest.raises(DuplicateJob) as info:
            await gw.submit(second)
        assert info.value.job_id == first.job_id
        assert gw.reader.waiting == 0
        retried = await gw.queue.enqueue(first)  # a retried XADD of the same job
        assert (retried.job_id, retried.duplicate, retried.entry_id) == (first.job_id, False, None)
        assert await redis.xlen(STREAM) == 1


async def test_full_queue_refuses_instead_of_dropping(
    redis: Redis, redis_settings: RedisSettings
) -> None:
    settings = fast_queue_settings(max_queue_depth=2)
    async with gateway(redis_settings, settings) as gw:
        await gw.queue.enqueue(chat_job(gw.reply_to))
        await gw.queue.enqueue(chat_job(gw.reply_to))
        with pytest.raises(Overloaded):
            await gw.submit(chat_job(gw.reply_to))
        assert gw.reader.waiting == 0
        await run_burst(redis_settings, settings, Recorder(), capacity=2)
        await gw.queue.enqueue(chat_job(gw.reply_to))  # room again once processed


async def test_clean_shutdown_hands_unfinished_jobs_over_at_once(
    redis: Redis, redis_settings: RedisSettings
) -> None:
    settings = fast_queue_settings(lease_s=5.0, shutdown_grace_s=0.1)
    async with gateway(redis_settings, settings) as gw:
        events = await gw.submit(chat_job(gw.reply_to))
        async with running_worker(redis_settings, settings, Recorder("a", sleep_s=60)):
            await next_event(events)
        started = time.monotonic()
        await run_burst(redis_settings, settings, Recorder("a", "b"))
        replies = await collect(events)
        assert time.monotonic() - started < settings.lease_s  # no lease wait
    assert summary(replies)[-3:] == [(2, "started"), (2, "text.delta"), (2, "done")]


async def test_a_lapsed_lease_does_not_make_a_worker_rerun_its_own_job(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    """A running job's lease lapses (an event loop stalled longer than a lease, renewals that
    all failed) and the first to see it idle is its own worker's ``XAUTOCLAIM``: the worker
    must run on with the run it has, not start the job a second time beside it.

    The lapse is made in Redis as a stall leaves it: the entry, still owned by the worker, set
    idle past a lease (``XCLAIM ... IDLE``), again and again until the worker's reclaim pass
    has seen it, since the worker's heartbeat renews it every ``heartbeat_interval_s``."""
    runs: list[int] = []
    lapses = 0

    async def long_job(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        runs.append(ctx.attempt)
        yield TextDelta(text="a")
        await asyncio.sleep(3 * queue_settings.lease_s)
        yield TextDelta(text="b")

    async with gateway(redis_settings, queue_settings) as gw:
        events = await gw.submit(chat_job(gw.reply_to))
        async with running_worker(redis_settings, queue_settings, long_job, capacity=2) as worker:
            first = [await next_event(events), await next_event(events)]
            [row] = await redis.xpending_range(STREAM, keys.WORKER_GROUP, "-", "+", 1)
            entry_id = row["message_id"]
            idle_ms = int(queue_settings.lease_s * 1000) + 1
            while lapses < 50 and row["times_delivered"] == 1:
                await redis.xclaim(
                    STREAM, keys.WORKER_GROUP, worker.worker_id, 0, [entry_id],
                    idle=idle_ms, justid=True,
                )  # fmt: skip
                lapses += 1
                await asyncio.sleep(0.02)
                [row] = await redis.xpending_range(STREAM, keys.WORKER_GROUP, "-", "+", 1)
            assert row["times_delivered"] == 2  # the worker's own XAUTOCLAIM took it back
            rest = await collect(events)
    assert summary(first + rest) == [
        (1, "started"),
        (1, "text.delta"),
        (1, "text.delta"),
        (1, "done"),
    ]
    assert runs == [1]
    assert await pending_count(redis) == 0
