"""``Idempotency-Key`` at the gateway on a real Redis, with the real worker loop around FAKE
handlers that count the jobs they run (the e2e tier runs the real workers:
``tests/e2e/test_idempotency.py``).

What is proved here is the gateway's logic: one job set per key, the same answer for a retry
after or during the first request (and after its client left), 422 for a different request, per
API key scoping, a refused request not holding its key, a lost first attempt, a bad header.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from server.app import create_app
from server.idempotency.key import fingerprint, record_digest
from server.idempotency.records import Record
from tests.integration.gateway.test_gateway_redis import KEY, gateway_settings
from tests.integration.workers.helpers import running_worker
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

OTHER_KEY = "integration-key-other"
CHAT = {"model": "seed-x-i", "messages": [{"role": "user", "content": "hi"}]}
SLOW = {"model": "seed-x-i", "messages": [{"role": "user", "content": "slow"}]}
HANG_GUARD_S = 60.0


class Counted:
    """Fake handlers that record the id of every job they run. A "slow" chat writes its first
    word, then waits for ``release`` (so a test decides when the first request ends)."""

    def __init__(self) -> None:
        self.llm: list[str] = []
        self.diffusion: list[str] = []
        self.release = asyncio.Event()

    async def run_llm(self, job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        assert isinstance(job, ChatJob)
        self.llm.append(job.job_id)
        slow = "slow" in str(job.messages)
        for i in range(60 if slow else 3):
            if ctx.stopped:
                return
            yield TextDelta(text=f"w{i} ")
            while slow and not self.release.is_set():
                if ctx.stopped:  # cancelled: the answer then lacks its last words
                    return
                await asyncio.sleep(0.02)
        if job.allow_image_output:
            embedding = await ctx.blobs.put_tensor(np.zeros((4, 8), np.float16), owner=job.job_id)
            yield EmbeddingReady(embedding=embedding)
        yield Usage(prompt_tokens=3, completion_tokens=3)

    async def run_diffusion(self, job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        assert isinstance(job, ImageGenerateJob)
        self.diffusion.append(job.job_id)
        buffer = io.BytesIO()
        Image.new("RGB", (job.width, job.height), (0, 90, len(self.diffusion))).save(
            buffer, format="PNG"
        )
        ref = await ctx.blobs.put(buffer.getvalue(), content_type="image/png", owner=job.request_id)
        yield ImageReady(
            image=ref, width=job.width, height=job.height, output_format="png", seed=job.seed
        )


@pytest.fixture
async def app(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> AsyncIterator[FastAPI]:
    settings = gateway_settings(redis_settings, queue_settings, api_keys=[KEY, OTHER_KEY])
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def counted(
    redis_settings: RedisSettings, queue_settings: QueueSettings
) -> AsyncIterator[Counted]:
    jobs = Counted()
    async with (
        running_worker(redis_settings, queue_settings, jobs.run_llm, model="seed-x-i", capacity=4),
        running_worker(
            redis_settings,
            queue_settings,
            jobs.run_diffusion,
            stage="diffusion",
            model="first_stage",
            capacity=4,
        ),
    ):
        yield jobs


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://g", timeout=HANG_GUARD_S
    ) as c:
        yield c


def headers(idempotency_key: str, api_key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Idempotency-Key": idempotency_key}


def outcomes(route: str) -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value(
            "seedx_gateway_idempotent_requests_total", {"route": route, "outcome": outcome}
        )
        or 0.0
        for outcome in ("started", "joined", "replayed", "conflict")
    }


def grew(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def test_a_retry_gets_the_same_answer_and_starts_no_job(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    before = outcomes("/v1/chat/completions")
    first = await client.post("/v1/chat/completions", json=CHAT, headers=headers("k-chat"))
    assert first.status_code == 200, first.text
    reordered = {"messages": CHAT["messages"], "model": "seed-x-i"}  # same request, other bytes
    second = await client.post("/v1/chat/completions", json=reordered, headers=headers("k-chat"))
    assert second.status_code == 200
    assert second.content == first.content
    assert second.headers["x-request-id"] == first.headers["x-request-id"]
    assert first.json()["id"] == f"chatcmpl-{first.headers['x-request-id']}"
    assert len(counted.llm) == 1
    assert grew(before, outcomes("/v1/chat/completions")) == {"started": 1, "replayed": 1}

    streamed = {**CHAT, "stream": True}
    one = await client.post("/v1/chat/completions", json=streamed, headers=headers("k-stream"))
    two = await client.post("/v1/chat/completions", json=streamed, headers=headers("k-stream"))
    assert one.headers["content-type"].startswith("text/event-stream")
    assert two.content == one.content
    assert one.text.rstrip().endswith("data: [DONE]")
    assert len(counted.llm) == 2


async def test_images_n2_and_a_drawing_chat_record_the_whole_job_set(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    images = {"prompt": "x", "n": 2, "response_format": "b64_json"}
    first = await client.post("/v1/images/generations", json=images, headers=headers("k-img"))
    assert first.status_code == 200, first.text
    assert len(first.json()["data"]) == 2
    second = await client.post("/v1/images/generations", json=images, headers=headers("k-img"))
    assert second.content == first.content
    assert (len(counted.llm), len(counted.diffusion)) == (1, 2)

    drawing = {**CHAT, "modalities": ["text", "image"], "image_options": {"require": True}}
    one = await client.post("/v1/chat/completions", json=drawing, headers=headers("k-draw"))
    assert one.status_code == 200, one.text
    two = await client.post("/v1/chat/completions", json=drawing, headers=headers("k-draw"))
    assert two.content == one.content
    assert (len(counted.llm), len(counted.diffusion)) == (2, 3)


async def test_a_retry_while_the_first_runs_joins_it(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    before = outcomes("/v1/chat/completions")
    body = {**SLOW, "stream": True}
    first = asyncio.create_task(
        client.post("/v1/chat/completions", json=body, headers=headers("k-slow"))
    )
    async with asyncio.timeout(HANG_GUARD_S):
        while not counted.llm:  # the first request's job is running (and waits for release)
            await asyncio.sleep(0.02)
    retry = asyncio.create_task(
        client.post("/v1/chat/completions", json=body, headers=headers("k-slow"))
    )
    async with asyncio.timeout(HANG_GUARD_S):
        while grew(before, outcomes("/v1/chat/completions")).get("joined") != 1:
            await asyncio.sleep(0.02)
    counted.release.set()
    original, joined = await first, await retry
    assert original.status_code == 200
    assert joined.content == original.content
    assert original.text.count("w59 ") == 1
    assert len(counted.llm) == 1
    assert grew(before, outcomes("/v1/chat/completions")) == {"started": 1, "joined": 1}


async def test_a_retry_on_another_gateway_replica_joins_the_first(
    client: httpx.AsyncClient,
    counted: Counted,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
) -> None:
    settings = gateway_settings(redis_settings, queue_settings, api_keys=[KEY, OTHER_KEY])
    replica = create_app(settings)  # its own reply stream and pool: as another pod
    body = {**SLOW, "stream": True}
    async with (
        replica.router.lifespan_context(replica),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=replica), base_url="http://r", timeout=HANG_GUARD_S
        ) as other,
    ):
        first = asyncio.create_task(
            client.post("/v1/chat/completions", json=body, headers=headers("k-replica"))
        )
        async with asyncio.timeout(HANG_GUARD_S):
            while not counted.llm:
                await asyncio.sleep(0.02)
        retry = asyncio.create_task(
            other.post("/v1/chat/completions", json=body, headers=headers("k-replica"))
        )
        await asyncio.sleep(0.5)  # the retry is waiting on Redis for the first one's answer
        assert not retry.done()
        counted.release.set()
        original, joined = await first, await retry
    assert joined.status_code == 200
    assert joined.content == original.content
    assert original.text.count("w59 ") == 1
    assert len(counted.llm) == 1


async def test_a_different_request_with_the_key_is_422_and_another_api_key_is_independent(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    first = await client.post("/v1/chat/completions", json=CHAT, headers=headers("k-same"))
    assert first.status_code == 200
    other = {**CHAT, "max_tokens": 5}
    reused = await client.post("/v1/chat/completions", json=other, headers=headers("k-same"))
    assert reused.status_code == 422
    assert reused.json()["error"]["param"] == "Idempotency-Key"
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    elsewhere = await client.post(
        "/v1/images/generations", json={"prompt": "x"}, headers=headers("k-same")
    )
    assert elsewhere.status_code == 422
    assert len(counted.llm) == 1

    tenant = await client.post(
        "/v1/chat/completions", json=other, headers=headers("k-same", OTHER_KEY)
    )
    assert tenant.status_code == 200
    assert tenant.json()["id"] != first.json()["id"]
    assert len(counted.llm) == 2


async def test_a_refused_request_does_not_hold_its_key(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    bad = await client.post("/v1/chat/completions", json={**CHAT, "n": 0}, headers=headers("k-fix"))
    assert bad.status_code == 400
    fixed = await client.post("/v1/chat/completions", json=CHAT, headers=headers("k-fix"))
    assert fixed.status_code == 200
    assert len(counted.llm) == 1


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "1 to 255"),
        ("a" * 256, "1 to 255"),
        ("has space", "visible ASCII"),
        ('"é"'.encode("latin-1"), "ASCII"),
    ],
)
async def test_a_malformed_key_is_400_naming_the_header(
    client: httpx.AsyncClient, value: str | bytes, problem: str
) -> None:
    answer = await client.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": value},
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "Idempotency-Key"
    assert problem in error["message"]


async def test_the_structured_field_form_is_the_same_key(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    one = await client.post("/v1/chat/completions", json=CHAT, headers=headers('"k-sf"'))
    two = await client.post("/v1/chat/completions", json=CHAT, headers=headers("k-sf"))
    assert two.content == one.content
    assert len(counted.llm) == 1


async def test_a_lost_first_attempt_ends_its_followers_with_503_and_frees_the_key(
    client: httpx.AsyncClient, redis: Redis, counted: Counted
) -> None:
    # A gateway that claimed the key and died: its claim is a record nobody renews.
    tenant = hashlib.sha256(KEY.encode()).hexdigest()
    digest = record_digest(tenant, "k-lost")
    body = httpx.Request("POST", "http://g", json=CHAT).content
    orphan = Record(fingerprint("POST", "/v1/chat/completions", body), "dead-attempt")
    await redis.set(keys.request_record_key(digest), orphan.dumps(), px=500)
    sent = {**headers("k-lost"), "Content-Type": "application/json"}
    lost = await client.post("/v1/chat/completions", content=body, headers=sent)
    assert lost.status_code == 503
    assert "retry" in lost.json()["error"]["message"]
    again = await client.post("/v1/chat/completions", content=body, headers=sent)
    assert again.status_code == 200
    assert len(counted.llm) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` behind uvicorn on a free port (real connections, so a client can leave)."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, HANG_GUARD_S)


async def test_a_client_that_leaves_does_not_cancel_the_keyed_request(
    app: FastAPI, counted: Counted
) -> None:
    body = {**SLOW, "stream": True}
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=HANG_GUARD_S) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers("k-leave")
        ) as first:
            async for _ in first.aiter_bytes():
                break  # the first word arrived: the job is running; the client now leaves
        await asyncio.sleep(0.5)  # time enough for a gateway to notice and cancel (it must not)
        counted.release.set()
        retry = await http.post("/v1/chat/completions", json=body, headers=headers("k-leave"))
    assert retry.status_code == 200
    assert retry.text.count("w59 ") == 1
    assert retry.text.rstrip().endswith("data: [DONE]")
    assert len(counted.llm) == 1
