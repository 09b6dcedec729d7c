"""A worker whose engine died leaves at once and loses nothing (issue 21 item 4), on real Redis.

The engine is a flag here (``alive``) and a handler that raises ``EngineDied``, as the LLM
handler does once vLLM's engine core is gone; ``tests/e2e/test_engine_death.py`` kills the real
``VLLM::EngineCore``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.integration.workers.helpers import (
    MODEL,
    chat_job,
    collect,
    gateway,
    next_event,
    running_worker,
    summary,
)
from workers import keys
from workers.connection import create_redis
from workers.handler import EngineDied, JobContext
from workers.heartbeat import WorkerRegistry
from workers.protocol import Event, Job, TextDelta
from workers.settings import QueueSettings, RedisSettings
from workers.worker import Worker, WorkerDied

STREAM = keys.job_stream("llm", MODEL)


class Engine:
    """An engine that can die: jobs emit "a", then wait for the next token, which never comes
    once it is dead (the handler then raises EngineDied, as the LLM handler does)."""

    def __init__(self) -> None:
        self.alive = True
        self.died = asyncio.Event()
        self.started = asyncio.Event()

    def kill(self) -> None:
        self.alive = False
        self.died.set()

    async def __call__(self, job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        if not self.alive:
            raise EngineDied("the engine is dead")
        yield TextDelta(text="a")
        self.started.set()
        await self.died.wait()
        raise EngineDied("the engine core died mid-job")


async def _pending(redis: Redis) -> int:
    found: dict[str, int] = await redis.xpending(STREAM, keys.WORKER_GROUP)
    return int(found["pending"])


def _worker(client: Redis, settings: QueueSettings, engine: Engine, capacity: int = 1) -> Worker:
    """A worker of ``MODEL`` running ``engine``, which it polls for liveness."""
    return Worker(
        client,
        settings,
        stage="llm",
        model=MODEL,
        handler=engine,
        capacity=capacity,
        alive=lambda: engine.alive,
    )


async def _wait_for(check: object, timeout_s: float) -> float:
    """Seconds until ``check()`` (an async callable) is true; fails after ``timeout_s``."""
    began = time.monotonic()
    while not await check():  # type: ignore[operator]
        assert time.monotonic() - began < timeout_s, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


@pytest.fixture
def slow_heartbeats() -> QueueSettings:
    """Heartbeats far apart and a long lease: a worker that vanished at once did so on purpose,
    not because its key expired."""
    from tests.integration.conftest import fast_queue_settings

    return fast_queue_settings(lease_s=30.0, heartbeat_interval_s=10.0)


async def test_an_idle_worker_whose_engine_died_deregisters_at_once_and_raises(
    redis: Redis, redis_settings: RedisSettings, slow_heartbeats: QueueSettings
) -> None:
    engine = Engine()
    client = create_redis(redis_settings)
    worker = _worker(client, slow_heartbeats, engine)
    registry = WorkerRegistry(redis, slow_heartbeats)
    run = asyncio.create_task(worker.run())
    try:
        await _wait_for(lambda: registry.is_alive(worker.worker_id), 5)
        engine.kill()

        async def gone() -> bool:
            return not await registry.is_alive(worker.worker_id)

        assert await _wait_for(gone, 5) < 1.5  # polled every 0.25 s, deleted right away
        with pytest.raises(WorkerDied, match="not alive"):
            await asyncio.wait_for(run, 10)
        assert worker.failure is not None
        assert await registry.list_workers() == []
    finally:
        run.cancel()
        await client.aclose()


async def test_jobs_held_when_the_engine_dies_are_handed_back_unanswered_and_finished_elsewhere(
    redis: Redis, redis_settings: RedisSettings, slow_heartbeats: QueueSettings
) -> None:
    engine = Engine()
    client = create_redis(redis_settings)
    worker = _worker(client, slow_heartbeats, engine, capacity=2)
    async with gateway(redis_settings, slow_heartbeats) as gw:
        running = await gw.submit(chat_job(gw.reply_to, deadline_s=60))
        run = asyncio.create_task(worker.run())
        try:
            first = [await next_event(running), await next_event(running)]
            assert summary(first) == [(1, "started"), (1, "text.delta")]
            await asyncio.wait_for(engine.started.wait(), 5)
            engine.kill()
            with pytest.raises(WorkerDied):
                await asyncio.wait_for(run, 10)
        finally:
            run.cancel()
            await client.aclose()
        # no Failed was sent: the request is still waiting, its job unacknowledged ...
        assert await _pending(redis) == 1
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(running.__anext__(), 0.3)
        # ... and reclaimable at once (not a lease later), by another or a restarted worker
        queued = await gw.submit(chat_job(gw.reply_to, deadline_s=60))
        began = time.monotonic()
        async with running_worker(redis_settings, slow_heartbeats, healthy, capacity=2):
            rest = await collect(running, 10)
            other = await collect(queued, 10)
        assert time.monotonic() - began < slow_heartbeats.lease_s / 2
    assert summary(rest) == [(2, "started"), (2, "done")]  # its replayed "a" was dropped
    texts = [r.event.text for r in first + rest if isinstance(r.event, TextDelta)]
    assert texts == ["a"]
    assert summary(other) == [(1, "started"), (1, "text.delta"), (1, "done")]
    assert await _pending(redis) == 0


async def healthy(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    """A worker whose engine is fine: the same first token, then done."""
    yield TextDelta(text="a")
