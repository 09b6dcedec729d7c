"""The diffusion worker through real Redis with the real ``Worker`` loop (burst mode).

Jobs go in through the gateway's ``Transport`` with their blobs, events come back on its reply
stream; the oracle is the engine pipeline with the same seed.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from redis.asyncio import Redis

from engine.checkpoint import layout
from engine.checkpoint.detokenizer_folder import load_detokenizer
from engine.pipelines import DetokenizerPipeline
from tests.integration.workers.helpers import (
    collect,
    gateway,
    next_event,
    run_burst,
    running_worker,
)
from tests.unit.diffusion.support import (
    edit_job,
    embedding,
    generate_job,
    max_pixel_diff,
    picture,
    png,
    worker_settings,
)
from workers.diffusion import metrics
from workers.diffusion.worker import DiffusionService, diffusion_service
from workers.protocol import Failed, ImageReady, Job, PartialImage, Reply
from workers.settings import QueueSettings, RedisSettings
from workers.transport import Transport

MODEL = "first_stage"


@pytest.fixture
def pipeline(detok_root: Path) -> DetokenizerPipeline:
    return load_detokenizer(layout.serving_detokenizer_dir(detok_root, MODEL))


@pytest.fixture
async def service(
    pipeline: DetokenizerPipeline, detok_root: Path
) -> AsyncIterator[DiffusionService]:
    async with diffusion_service(pipeline, worker_settings(detok_root)) as svc:
        yield svc


def routed(job: Job, transport: Transport) -> Job:
    return job.model_copy(update={"reply_to": transport.reply_to})


async def image(transport: Transport, replies: list[Reply]) -> Image.Image:
    ready = [r.event for r in replies if isinstance(r.event, ImageReady)]
    assert len(ready) == 1, [r.event.type for r in replies]
    with Image.open(io.BytesIO(await transport.blobs.get(ready[0].image))) as img:
        return img.convert("RGB")


async def test_generate_end_to_end(
    redis: Redis,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    service: DiffusionService,
    pipeline: DetokenizerPipeline,
) -> None:
    async with gateway(redis_settings, queue_settings) as gw:
        array = embedding(1).astype(np.float16)  # as the LLM worker stores it
        ref = await gw.blobs.put_tensor(array, owner="req")
        job = routed(generate_job(ref, seed=5, steps=4, partial_images=2), gw)
        subscription = await gw.submit(job)
        worker = await run_burst(
            redis_settings, queue_settings, service.handler, stage="diffusion", model=MODEL,
            capacity=8,
        )  # fmt: skip
        replies = await collect(subscription)
        types = [r.event.type for r in replies]
        assert types == ["started", "image.partial", "image.partial", "image.ready", "usage",
                         "done"]  # fmt: skip
        previews = [r.event for r in replies if isinstance(r.event, PartialImage)]
        assert [p.partial_index for p in previews] == [0, 1]
        assert worker.processed == 1
        embeds = torch.from_numpy(array.astype(np.float32))[None]
        expected = pipeline.generate(embeds, seed=5, height=64, width=64, num_inference_steps=4)
        assert max_pixel_diff(await image(gw, replies), expected) == 0
        owned = await redis.smembers(f"seedx:blobs:{job.request_id}")
        assert len(owned) == 3  # two previews and the image, freed with the request


async def test_batches_compatible_jobs_around_an_odd_head(
    redis: Redis,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    service: DiffusionService,
) -> None:
    async with gateway(redis_settings, queue_settings) as gw:
        ref = await gw.blobs.put_tensor(embedding(2))
        jobs = [routed(generate_job(ref, width=128, seed=0), gw)]
        jobs += [routed(generate_job(ref, seed=s), gw) for s in range(1, 5)]
        subscriptions = [await gw.submit(job) for job in jobs]
        await run_burst(
            redis_settings, queue_settings, service.handler, stage="diffusion", model=MODEL,
            capacity=8,
        )  # fmt: skip
        results = [await collect(s) for s in subscriptions]
    assert all(r[-1].event.type == "done" for r in results)
    assert service.dispatcher.batches == 2  # four compatible together, the odd one alone


async def test_cancel_a_running_job(
    redis: Redis,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    service: DiffusionService,
) -> None:
    dropped = metrics.DROPPED._value.get()
    async with gateway(redis_settings, queue_settings) as gw:
        ref = await gw.blobs.put_tensor(embedding(3))
        slow = {"steps": 60, "partial_images": 3}
        doomed = routed(generate_job(ref, seed=1, **slow), gw)
        kept = routed(generate_job(ref, seed=2, **slow), gw)
        doomed_events = await gw.submit(doomed)
        kept_events = await gw.submit(kept)
        async with running_worker(
            redis_settings, queue_settings, service.handler, stage="diffusion", model=MODEL,
            capacity=8,
        ):  # fmt: skip
            assert (await next_event(doomed_events)).event.type == "started"
            assert (await next_event(doomed_events)).event.type == "image.partial"
            await gw.cancel(doomed.job_id)
            cancelled_at = time.monotonic()
            rest = await collect(doomed_events)
            latency = time.monotonic() - cancelled_at
            kept_replies = await collect(kept_events, timeout=60)
    failed = rest[-1].event
    assert isinstance(failed, Failed)
    assert failed.error.code == "cancelled"
    assert latency < 2.0  # the watch loop polls every 0.2 s here; the handler returns at once
    assert kept_replies[-1].event.type == "done"
    assert metrics.DROPPED._value.get() == dropped + 1  # and it left the UNet batch


async def test_bad_jobs_fail_clearly_and_the_worker_keeps_serving(
    redis: Redis,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    service: DiffusionService,
) -> None:
    async with gateway(redis_settings, queue_settings) as gw:
        good = await gw.blobs.put_tensor(embedding(4))
        src = await gw.blobs.put(png(picture(1)))
        missing = good.model_copy(update={"key": "seedx:blob:expired"})
        bad: list[tuple[Job, str, str]] = [
            (routed(generate_job(missing), gw), "blob_missing", "embedding"),
            (routed(edit_job(good, src, model=MODEL), gw), "invalid_request", "kind"),
            (routed(generate_job(good, steps=400), gw), "invalid_request", "steps"),
        ]
        after = routed(generate_job(good, seed=9), gw)
        subscriptions = [await gw.submit(job) for job, _, _ in bad]
        last = await gw.submit(after)
        await run_burst(
            redis_settings, queue_settings, service.handler, stage="diffusion", model=MODEL,
            capacity=8,
        )  # fmt: skip
        for subscription, (_, code, param) in zip(subscriptions, bad, strict=True):
            event = (await collect(subscription))[-1].event
            assert isinstance(event, Failed)
            assert (event.error.code, event.error.param) == (code, param)
        assert (await collect(last))[-1].event.type == "done"
