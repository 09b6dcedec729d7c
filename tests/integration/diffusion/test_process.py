"""``seedx worker diffusion`` as a real process: it serves, and SIGTERM drains it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from tests.integration.workers.helpers import collect, gateway, next_event
from tests.unit.diffusion.support import embedding, generate_job
from workers.heartbeat import WorkerRegistry
from workers.settings import QueueSettings, RedisSettings


def start_worker(root: Path, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SEEDX_DIFFUSION_DEVICE": "cpu",
        "SEEDX_DIFFUSION_QUEUE__LEASE_S": "2",
        "SEEDX_DIFFUSION_QUEUE__HEARTBEAT_INTERVAL_S": "0.2",
        "SEEDX_DIFFUSION_QUEUE__BLOCK_S": "0.2",
        "SEEDX_DIFFUSION_QUEUE__SHUTDOWN_GRACE_S": "30",
    }
    command = [sys.executable, "-m", "seedx.cli", "worker", "diffusion", "--model", str(root),
               "--redis-url", redis_url]  # fmt: skip
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would block the worker
        return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)


async def test_sigterm_finishes_the_running_job_then_exits(
    redis: Redis,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    detok_root: Path,
    tmp_path: Path,
) -> None:
    registry = WorkerRegistry(redis, queue_settings)
    log = tmp_path / "worker.log"
    process = start_worker(detok_root, redis_settings.url, log)
    try:
        async with gateway(redis_settings, queue_settings) as gw:
            ref = await gw.blobs.put_tensor(embedding(1))
            job = generate_job(
                ref, steps=100, partial_images=1, reply_to=gw.reply_to, deadline=time.time() + 120
            )
            events = await gw.submit(job)
            started = await next_event(events, timeout=90)  # includes the process start
            assert started.event.type == "started"
            assert (await next_event(events, timeout=60)).event.type == "image.partial"
            assert [w.stage for w in await registry.list_workers()] == ["diffusion"]
            process.send_signal(signal.SIGTERM)
            replies = await collect(events, timeout=60)
            assert replies[-1].event.type == "done"  # drained, not abandoned
            code = await asyncio.to_thread(process.wait, 30)
            assert code == 0, log.read_text()[-2000:]
            assert await registry.list_workers() == []  # deregistered on the way out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
