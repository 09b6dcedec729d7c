"""A full Redis (``maxmemory`` reached, ``noeviction``) and a Redis Cluster, on real servers.

Each test starts its own ``redis-server`` on a free port (never the shared one): the full-Redis
tests write junk and ``CONFIG SET maxmemory`` below what Redis then holds (``noeviction``), so
every write is refused with ``-OOM`` until the junk is deleted; the cluster tests start one
with ``--cluster-enabled yes`` (no cluster formed: the flag alone makes the server say ``mode:
cluster``).

- Admission answers 503 with ``Retry-After`` and ``store_full`` (chat, streamed chat, images)
  through the real gateway app; ``/readyz`` says "Redis full"; the gauge and counter move.
- A worker's blob or event write under OOM is retried with backoff within the job's deadline:
  it succeeds once room comes back, and otherwise fails with StoreFull naming the cause; a job
  whose answer cannot be written either is acknowledged and logged, never left to run again.
- A cluster is a StartupError at the first connection (worker loop, gateway start, ``seedx
  gateway`` exits 78).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from seedx.chaos.redis_servers import RedisServer, plain_config
from server.app import create_app
from tests.integration.conftest import fast_queue_settings, fast_redis_settings, free_port
from tests.integration.gateway.test_gateway_redis import (
    AUTH,
    CHAT,
    KEY,
    fake_diffusion,
    fake_llm,
    gateway_settings,
)
from tests.integration.workers.helpers import chat_job, gateway, running_worker, summary
from workers import connection, keys
from workers.blobs import BlobStore
from workers.connection import (
    create_redis,
    refuse_cluster,
    refuse_cluster_url,
)
from workers.errors import StoreFull
from workers.handler import Handler, JobContext
from workers.protocol import Done, EmbeddingReady, Event, Failed, Job, TextDelta
from workers.replies import ReplyWriter
from workers.settings import QueueSettings, RedisSettings
from workers.startup import StartupError, check_redis
from workers.worker import Worker

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server")

JUNK = b"x" * 65536


class RedisProcess:
    """``redis-server`` of one test on a free port (extra config lines: ``extra``)."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self._server = RedisServer(folder, plain_config(*extra))
        self.port = self._server.port
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._server.close()


@pytest.fixture(autouse=True)
def forget_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "Redis refused a write lately" state is per process: tests after these start clean."""
    monkeypatch.setattr(connection, "_last_full_at", None)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path / "redis")
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def cluster_server(tmp_path: Path) -> Iterator[RedisProcess]:
    folder = tmp_path / "cluster"
    process = RedisProcess(
        folder, "cluster-enabled yes", f"cluster-config-file {folder / 'nodes.conf'}"
    )
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def queue() -> QueueSettings:
    # Heartbeats cannot be renewed while Redis is full: a lease longer than the test keeps the
    # workers visible, so admission fails on the store, not on "no worker".
    return fast_queue_settings(lease_s=30.0, heartbeat_interval_s=0.2)


@pytest.fixture
def settings(server: RedisProcess) -> RedisSettings:
    return fast_redis_settings(server.url)


@pytest.fixture
async def admin(settings: RedisSettings) -> AsyncIterator[Redis]:
    client = create_redis(settings)
    try:
        yield client
    finally:
        await client.aclose()


async def fill(admin: Redis, count: int = 32) -> int:
    """Write 2 MiB of junk, then cap Redis below what it holds (``noeviction``): every write
    is refused with -OOM until the junk is deleted."""
    for i in range(count):
        await admin.set(f"junk:{i}", JUNK)
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", used - 256 * 1024)
    with pytest.raises(OutOfMemoryError):
        await admin.set("probe", b"x")
    return count


async def make_room(admin: Redis, count: int) -> None:
    """Delete the junk (DEL needs no memory): writes are accepted again."""
    await admin.delete(*(f"junk:{i}" for i in range(count)))
    assert await admin.set("probe", b"x")


def refusals() -> float:
    return REGISTRY.get_sample_value("seedx_redis_full_refusals_total") or 0.0


# --- admission through the real gateway app ---------------------------------------------------


@pytest.fixture
async def app(settings: RedisSettings, queue: QueueSettings) -> AsyncIterator[FastAPI]:
    application = create_app(gateway_settings(settings, queue))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://g", headers=AUTH) as c:
        yield c


@pytest.fixture
async def workers(settings: RedisSettings, queue: QueueSettings) -> AsyncIterator[None]:
    async with (
        running_worker(settings, queue, fake_llm, model="seed-x-i", capacity=4),
        running_worker(settings, queue, fake_diffusion, stage="diffusion", model="first_stage"),
    ):
        yield


def assert_store_full(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "store_full"
    assert error["type"] == "server_error"
    assert "the job store is full" in error["message"]


async def test_admission_answers_503_store_full_and_readyz_says_redis_full(
    client: httpx.AsyncClient, admin: Redis, workers: None
) -> None:
    deadline = time.monotonic() + 10
    while (ready := await client.get("/readyz")).status_code != 200:  # workers heartbeat
        assert time.monotonic() < deadline, ready.text
        await asyncio.sleep(0.05)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert ready.json()["checks"]["redis_memory"] is True

    count = await fill(admin)
    before = refusals()
    depth = await admin.xlen(keys.job_stream("llm", "seed-x-i"))

    assert_store_full(await client.post("/v1/chat/completions", json=CHAT))
    assert_store_full(await client.post("/v1/chat/completions", json={**CHAT, "stream": True}))
    images = {"model": "seed-x-i", "prompt": "a red apple", "size": "64x64"}
    assert_store_full(await client.post("/v1/images/generations", json=images))
    assert refusals() >= before + 3
    assert await admin.xlen(keys.job_stream("llm", "seed-x-i")) == depth  # no work started

    ready = await client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["checks"]["redis_memory"] is False
    assert body["redis"].startswith("Redis full")
    metrics = (await client.get("/metrics")).text
    assert "seedx_gateway_redis_full 1.0" in metrics
    assert "seedx_redis_full_refusals_total" in metrics
    rejected = REGISTRY.get_sample_value(
        "seedx_gateway_rejections_total",
        {"route": "/v1/chat/completions", "reason": "store_full"},
    )
    assert rejected is not None
    assert rejected >= 2

    await make_room(admin, count)
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text


# --- a worker's writes under OOM ------------------------------------------------------------


async def test_worker_blob_write_is_retried_until_room_comes_back(
    admin: Redis, queue: QueueSettings
) -> None:
    count = await fill(admin)
    blobs = BlobStore(admin, queue).until(time.time() + 10)
    before = refusals()
    put = asyncio.create_task(blobs.put(b"embedding", owner="job-1"))
    await asyncio.sleep(0.5)
    assert not put.done()  # waiting for room, not failed
    assert refusals() >= before + 2  # retried
    await make_room(admin, count)
    ref = await asyncio.wait_for(put, timeout=5)
    assert await blobs.get(ref) == b"embedding"


async def test_worker_writes_fail_with_store_full_at_the_deadline(
    admin: Redis, queue: QueueSettings
) -> None:
    await fill(admin)
    started = time.monotonic()
    with pytest.raises(StoreFull, match=r"the job store is full.*within the job's deadline"):
        await BlobStore(admin, queue).until(time.time() + 1.0).put(b"x" * 1000)
    assert 0.5 < time.monotonic() - started < 3.0
    writer = ReplyWriter(
        admin,
        queue,
        reply_to=keys.reply_stream("r1"),
        job_id="job-1",
        request_id="req-1",
        trace_id="t",
        attempt=1,
        deadline=time.time() + 0.5,
    )
    with pytest.raises(StoreFull, match="sending an event"):
        await writer.emit(TextDelta(text="a"))
    assert writer.stamp(TextDelta(text="b")).seq == 0  # the refused event took no position
    # The gateway's store (no deadline) refuses at once: a 503 at admission.
    with pytest.raises(StoreFull, match="storing a blob"):
        await BlobStore(admin, queue).put(b"x")


def blob_handler(release: asyncio.Event) -> Handler:
    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="before ")
        await release.wait()
        ref = await ctx.blobs.put_tensor(np.zeros((4, 8), dtype="float16"), owner=job.job_id)
        yield EmbeddingReady(embedding=ref)

    return handler


async def test_running_job_waits_for_room_then_finishes(
    settings: RedisSettings, queue: QueueSettings, admin: Redis
) -> None:
    release = asyncio.Event()
    async with (
        running_worker(settings, queue, blob_handler(release)),
        gateway(settings, queue) as transport,
        await transport.submit(chat_job(transport.reply_to, deadline_s=20)) as events,
    ):
        replies = [await events.__anext__(), await events.__anext__()]  # started, text
        count = await fill(admin)
        release.set()
        await asyncio.sleep(0.5)
        await make_room(admin, count)
        replies += [reply async for reply in events]
    kinds = [reply.event.type for reply in replies]
    assert kinds == ["started", "text.delta", "embedding.ready", "done"]
    assert isinstance(replies[-1].event, Done)


async def test_running_jobs_keep_their_leases_while_redis_is_full(
    settings: RedisSettings, admin: Redis
) -> None:
    """``XCLAIM`` needs no memory: the heartbeat renews leases though Redis refuses its key's
    ``SET``, so a job running through a full Redis (four leases) is neither taken back by its
    own worker nor run twice, and answers once, as its first attempt."""
    queue = fast_queue_settings(lease_s=0.5, heartbeat_interval_s=0.1)
    release = asyncio.Event()
    runs: list[str] = []
    blobs = blob_handler(release)

    async def counted(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        runs.append(job.job_id)
        async for event in blobs(job, ctx):
            yield event

    stream = keys.job_stream("llm", "tiny")
    async with (
        # room for a second job: a worker with none claims nothing, its own jobs included
        running_worker(settings, queue, counted, capacity=2),
        gateway(settings, queue) as transport,
        await transport.submit(chat_job(transport.reply_to, deadline_s=30)) as events,
    ):
        replies = [await events.__anext__(), await events.__anext__()]  # started, text
        count = await fill(admin)
        await asyncio.sleep(4 * queue.lease_s)
        pending = await admin.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10)
        await make_room(admin, count)
        release.set()
        replies += [reply async for reply in events]
    assert len(runs) == 1, runs
    assert [int(p["times_delivered"]) for p in pending] == [1]
    assert summary(replies) == [
        (1, "started"),
        (1, "text.delta"),
        (1, "embedding.ready"),
        (1, "done"),
    ]


async def test_job_that_cannot_answer_is_acknowledged_and_logged(
    settings: RedisSettings,
    queue: QueueSettings,
    admin: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    stream = keys.job_stream("llm", "tiny")
    caplog.set_level(logging.WARNING, logger="workers")
    async with (
        running_worker(settings, queue, blob_handler(release)),
        gateway(settings, queue) as transport,
    ):
        job = chat_job(transport.reply_to, deadline_s=2.0)
        async with await transport.submit(job) as events:
            await events.__anext__()
            await events.__anext__()
            count = await fill(admin)
            release.set()
            deadline = time.monotonic() + 10
            while "answer could not be written" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.1)
            pending = await admin.xpending(stream, keys.WORKER_GROUP)
            assert pending["pending"] == 0  # acknowledged: it will not run again
            await make_room(admin, count)
    assert "within the job's deadline" in caplog.text


async def test_failed_answer_reaches_the_requester_when_room_comes_back_in_time(
    settings: RedisSettings, queue: QueueSettings, admin: Redis
) -> None:
    """The blob write gives up at the deadline (StoreFull); the answer, written after the
    job's own blobs are freed, tells the requester why."""
    release = asyncio.Event()

    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        yield TextDelta(text="before ")
        await ctx.blobs.put(b"y" * 400_000, owner=job.job_id)  # the job's own blob
        await release.wait()
        await ctx.blobs.put(b"z" * 1000, owner=job.job_id)
        yield TextDelta(text="never")

    async with running_worker(settings, queue, handler), gateway(settings, queue) as transport:
        job = chat_job(transport.reply_to, deadline_s=1.5)
        async with await transport.submit(job) as events:
            await events.__anext__()
            await events.__anext__()
            await asyncio.sleep(0.2)  # the 400 kB blob is stored
            used = int((await admin.info("memory"))["used_memory"])
            # Full by less than the job's blob: freeing it makes room for the answer.
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", used - 100_000)
            release.set()
            replies = [reply async for reply in events]
    assert len(replies) == 1
    failed = replies[0].event
    assert isinstance(failed, Failed)
    assert failed.error.code == "store_full"
    assert "the job store is full" in failed.error.message


# --- Redis Cluster ------------------------------------------------------------------------------


async def test_cluster_is_refused_at_start(
    cluster_server: RedisProcess, server: RedisProcess
) -> None:
    cluster = create_redis(fast_redis_settings(cluster_server.url))
    standalone = create_redis(fast_redis_settings(server.url))
    try:
        with pytest.raises(StartupError, match=r"Redis Cluster is not supported.*one slot"):
            await refuse_cluster(cluster)
        await refuse_cluster(standalone)  # passes
        worker = Worker(
            cluster,
            fast_queue_settings(),
            stage="llm",
            model="tiny",
            handler=blob_handler(asyncio.Event()),
        )
        with pytest.raises(StartupError, match="cluster mode"):
            await asyncio.wait_for(worker.run(), timeout=10)
    finally:
        await cluster.aclose()
        await standalone.aclose()
    with pytest.raises(StartupError, match="scheme names a cluster"):
        refuse_cluster_url("redis+cluster://127.0.0.1:7000/0")


def test_gateway_start_refuses_a_cluster(cluster_server: RedisProcess, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cluster mode"):
        asyncio.run(check_redis(fast_redis_settings(cluster_server.url)))
    environ = {**os.environ, "SEEDX_GATEWAY_API_KEYS": f'["{KEY}"]'}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "seedx.cli", "gateway", "--port", str(free_port())),
            *("--redis-url", cluster_server.url),
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 78, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("seedx gateway: error: Redis Cluster is not supported"), last
