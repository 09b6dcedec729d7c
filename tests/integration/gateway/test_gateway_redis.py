"""The gateway on a real Redis with the real worker loop around FAKE handlers.

These prove the gateway's side of the transport (admission from real queue depths, the single
reply reader, blobs, cancellation flags, a Redis outage) without the model; the e2e tier runs the
real LLM and diffusion workers.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from redis.asyncio import Redis

from server.app import create_app
from server.settings import GatewaySettings
from tests.integration.workers.helpers import free_port_url, running_worker
from workers import keys
from workers.handler import JobContext
from workers.protocol import (
    ChatJob,
    EmbeddingReady,
    Event,
    ImageGenerateJob,
    ImageReady,
    Job,
    TextDelta,
    Usage,
)
from workers.settings import QueueSettings, RedisSettings

KEY = "integration-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "seed-x-i", "messages": [{"role": "user", "content": "hi"}]}


def gateway_settings(redis: RedisSettings, queue: QueueSettings, **extra: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "api_keys": [KEY],
        "redis": redis,
        "queue": queue,
        "admission": {
            "stats_ttl_s": 0,
            "stats_max_age_s": 0,
            "directory_ttl_s": 0,
            "directory_max_age_s": 0,
        },
        "bounds": {"default_size": "64x64", "default_steps": 2},
        "chat_timeout_s": 10,
        "image_timeout_s": 10,
        **extra,
    }
    return GatewaySettings(**values)


async def fake_llm(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    assert isinstance(job, ChatJob)
    for i in range(200 if "slow" in str(job.messages) else 3):
        if ctx.stopped:
            return
        yield TextDelta(text=f"w{i} ")
        await asyncio.sleep(0.02 if "slow" in str(job.messages) else 0)
    if job.allow_image_output:
        embedding = await ctx.blobs.put_tensor(
            __import__("numpy").zeros((4, 8), dtype="float16"), owner=job.job_id
        )
        yield EmbeddingReady(embedding=embedding)
    yield Usage(prompt_tokens=3, completion_tokens=3)


async def fake_diffusion(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    assert isinstance(job, ImageGenerateJob)
    await ctx.blobs.get_tensor(job.embedding)
    buffer = io.BytesIO()
    Image.new("RGB", (job.width, job.height), (0, 90, 0)).save(buffer, format="PNG")
    ref = await ctx.blobs.put(buffer.getvalue(), content_type="image/png", owner=job.request_id)
    yield ImageReady(image=ref, width=job.width, height=job.height, output_format="png", seed=1)


@asynccontextmanager
async def gateway_and_workers(
    redis: RedisSettings, queue: QueueSettings, timeout_s: float
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app in this process with a real LLM and diffusion worker loop (fake
    handlers) on ``redis``: a client for tests of what Redis does under the whole stack."""
    app = create_app(
        gateway_settings(redis, queue, chat_timeout_s=timeout_s, image_timeout_s=timeout_s)
    )
    async with (
        running_worker(redis, queue, fake_llm, model="seed-x-i", capacity=4),
        running_worker(redis, queue, fake_diffusion, stage="diffusion", model="first_stage"),
        app.router.lifespan_context(app),
    ):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=AUTH) as c:
            yield c


@pytest.fixture
async def app(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> AsyncIterator[FastAPI]:
    application = create_app(gateway_settings(redis_settings, queue_settings))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=AUTH) as c:
        yield c


@pytest.fixture
async def workers(
    redis_settings: RedisSettings, queue_settings: QueueSettings
) -> AsyncIterator[None]:
    async with (
        running_worker(redis_settings, queue_settings, fake_llm, model="seed-x-i", capacity=4),
        running_worker(
            redis_settings, queue_settings, fake_diffusion, stage="diffusion", model="first_stage"
        ),
    ):
        yield


async def test_chat_and_image_through_redis(
    client: httpx.AsyncClient, redis: Redis, workers: None
) -> None:
    answer = (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert answer["choices"][0]["message"]["content"] == "w0 w1 w2 "
    streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert streamed.text.rstrip().endswith("data: [DONE]")
    image = await client.post(
        "/v1/images/generations", json={"prompt": "x", "response_format": "url"}
    )
    assert image.status_code == 200, image.text
    content = await client.get(image.json()["data"][0]["url"])
    assert Image.open(io.BytesIO(content.content)).size == (64, 64)
    models = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
    assert models == {"seed-x-i", "first_stage"}
    assert (await client.get("/readyz")).status_code == 200
    await asyncio.sleep(0.2)  # background release of the request's blobs
    blobs = [key async for key in redis.scan_iter(match=f"{keys.BLOB_PREFIX}*")]
    assert len(blobs) == 1  # only the published (url) image remains, until its TTL


async def test_full_queue_is_429_from_the_real_depth(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> None:
    settings = gateway_settings(
        redis_settings,
        queue_settings,
        admission={"stats_ttl_s": 0, "stats_max_age_s": 0, "llm_max_queue": 2},
    )
    app = create_app(settings)
    slow = {**CHAT, "messages": [{"role": "user", "content": "slow"}]}
    async with (
        running_worker(redis_settings, queue_settings, fake_llm, model="seed-x-i", capacity=1),
        app.router.lifespan_context(app),
    ):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=AUTH) as c:
            busy = [
                asyncio.create_task(c.post("/v1/chat/completions", json=slow)) for _ in range(2)
            ]
            await asyncio.sleep(0.5)  # one running, one queued: the bound of 2 is reached
            started = time.perf_counter()
            refused = await c.post("/v1/chat/completions", json=CHAT)
            elapsed = time.perf_counter() - started
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert elapsed < 0.5


async def test_disconnect_sets_the_cancel_flag_and_stops_the_worker(
    app: FastAPI, redis: Redis, workers: None
) -> None:
    transport = httpx.ASGITransport(app=app)
    body = {**CHAT, "messages": [{"role": "user", "content": "slow"}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=AUTH) as c:
        task = asyncio.create_task(c.post("/v1/chat/completions", json=body))
        await asyncio.sleep(0.5)
        task.cancel()  # the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(50):
        flags = [key async for key in redis.scan_iter(match=f"{keys.CANCEL_PREFIX}*")]
        if flags:
            break
        await asyncio.sleep(0.05)
    assert len(flags) == 1


async def test_redis_down_is_a_fast_503(queue_settings: QueueSettings) -> None:
    from tests.integration.conftest import fast_redis_settings

    settings = gateway_settings(fast_redis_settings(free_port_url()), queue_settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=AUTH) as c:
            started = time.perf_counter()
            response = await c.post("/v1/chat/completions", json=CHAT)
            elapsed = time.perf_counter() - started
            ready = await c.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert elapsed < 3.0
    assert ready.status_code == 503
