"""Builders shared by the transport integration tests: jobs, a gateway, workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.integration.conftest import free_port
from workers import keys
from workers.connection import create_redis
from workers.handler import Handler
from workers.protocol import ChatJob, ChatMessage, Reply, TextPart, new_id
from workers.replies import Subscription
from workers.settings import QueueSettings, RedisSettings
from workers.transport import Transport
from workers.worker import Worker

MODEL = "tiny"


def free_port_url() -> str:
    """A Redis URL nobody answers on."""
    return f"redis://127.0.0.1:{free_port()}/0"


def chat_job(reply_to: str, *, deadline_s: float = 20.0, **changes: Any) -> ChatJob:
    """A minimal chat job for model ``tiny`` answered on ``reply_to``."""
    values: dict[str, Any] = {
        "job_id": new_id(),
        "request_id": new_id(),
        "model": MODEL,
        "deadline": time.time() + deadline_s,
        "created_at": time.time(),
        "reply_to": reply_to,
        "messages": (ChatMessage(role="user", content=(TextPart(text="hi"),)),),
        **changes,
    }
    return ChatJob(**values)


@asynccontextmanager
async def gateway(
    redis_settings: RedisSettings, settings: QueueSettings, replica_id: str | None = None
) -> AsyncIterator[Transport]:
    """A started gateway-side transport on its own connection pool."""
    transport = Transport.connect(redis_settings, settings, replica_id)
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()


@asynccontextmanager
async def running_worker(
    redis_settings: RedisSettings,
    settings: QueueSettings,
    handler: Handler,
    *,
    stage: keys.Stage = "llm",
    model: str = MODEL,
    capacity: int = 1,
) -> AsyncIterator[Worker]:
    """A worker consuming in the background until the block exits."""
    redis = create_redis(redis_settings)
    worker = Worker(redis, settings, stage=stage, model=model, handler=handler, capacity=capacity)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=settings.shutdown_grace_s + 5)
        await redis.aclose()


async def run_burst(
    redis_settings: RedisSettings,
    settings: QueueSettings,
    handler: Handler,
    *,
    stage: keys.Stage = "llm",
    model: str = MODEL,
    capacity: int = 1,
) -> Worker:
    """Run a worker in burst mode: process what is queued, then return."""
    redis = create_redis(redis_settings)
    try:
        worker = Worker(
            redis, settings, stage=stage, model=model, handler=handler, capacity=capacity
        )
        await asyncio.wait_for(worker.run(burst=True), timeout=30)
        return worker
    finally:
        await redis.aclose()


async def collect(subscription: Subscription, timeout: float = 15.0) -> list[Reply]:
    """All events up to the terminal one, failing the test instead of hanging."""
    return await asyncio.wait_for(subscription.collect(), timeout=timeout)


async def next_event(subscription: Subscription, timeout: float = 15.0) -> Reply:
    """The next event, failing the test instead of hanging."""
    return await asyncio.wait_for(subscription.__anext__(), timeout=timeout)


def summary(replies: list[Reply]) -> list[tuple[int, str]]:
    """(attempt, type) of each event, for compact assertions."""
    return [(reply.attempt, reply.event.type) for reply in replies]
