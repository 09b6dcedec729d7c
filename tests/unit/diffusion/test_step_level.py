"""Step-level batching through the handler, dispatcher and runner (issue 25), without Redis.

A job that arrives while a batch denoises joins it at the next step (one dispatcher batch, the
UNet rows grow), leaves at its own last step, and its image equals the engine pipeline's alone
up to the UNet's batch rounding (one 8-bit level). With ``batching="batch"`` the same arrival
waits for the whole batch: a second batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.pipelines import DetokenizerPipeline
from tests.unit.diffusion.support import (
    collect,
    context,
    decode,
    embedding,
    generate_job,
    max_pixel_diff,
    memory_blobs,
    worker_settings,
)
from workers.diffusion import metrics
from workers.diffusion.worker import diffusion_service
from workers.protocol import Event, ImageReady, Job, PartialImage

HANG_GUARD_S = 60.0


@pytest.mark.parametrize("batching", ["step", "batch"])
async def test_a_late_job_joins_the_running_batch_at_the_next_step(
    first_stage: DetokenizerPipeline,
    detok_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    batching: str,
) -> None:
    blobs = memory_blobs()
    settings = worker_settings(detok_root, batching=batching, max_batch=4)
    rows: list[int] = []
    first_call = threading.Event()
    real = first_stage.unet.forward

    def spy(sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        rows.append(sample.shape[0])
        first_call.set()
        time.sleep(0.05)  # a step long enough for the late job to arrive during it
        return real(sample, timestep, **kwargs)

    monkeypatch.setattr(first_stage.unet, "forward", spy)
    decoded: list[int] = []
    real_decode = first_stage.decode

    def decode_spy(latents: torch.Tensor) -> Any:
        decoded.append(latents.shape[0])
        return real_decode(latents)

    monkeypatch.setattr(first_stage, "decode", decode_spy)
    joins = metrics.JOINS.collect()[0].samples
    async with diffusion_service(first_stage, settings) as svc:
        early = generate_job(await blobs.put_tensor(embedding(1)), seed=1, steps=6)
        late = generate_job(await blobs.put_tensor(embedding(2)), seed=2, steps=6, partial_images=2)
        finished: dict[str, float] = {}

        async def timed(job: Job) -> list[Event]:
            events = await collect(svc.handler, job, context(job, blobs))
            finished[job.job_id] = time.monotonic()
            return events

        first = asyncio.create_task(timed(early))
        assert await asyncio.to_thread(first_call.wait, HANG_GUARD_S)
        second_events = await timed(late)
        first_events = await first
        batches = svc.dispatcher.batches
    monkeypatch.undo()
    if batching == "step":
        assert batches == 1
        joined_at = rows.index(4)
        assert 1 <= joined_at <= 3  # the late job ran beside the early one...
        # ...for 6 steps each: the early job leaves the UNet at its own last step
        assert rows == [2] * joined_at + [4] * (6 - joined_at) + [2] * joined_at
        # each image is decoded at its own last step: the early one does not wait for the late
        assert decoded == [1, 1]
        assert joins != metrics.JOINS.collect()[0].samples
    else:
        assert batches == 2
        assert rows == [2] * 12  # the late job waited for the whole first batch
    previews = [e for e in second_events if isinstance(e, PartialImage)]
    assert [p.partial_index for p in previews] == [0, 1]
    options: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 6}
    for events, job, seed in ((first_events, early, 1), (second_events, late, 2)):
        ready = [e for e in events if isinstance(e, ImageReady)]
        assert len(ready) == 1, job
        image = decode(await blobs.get(ready[0].image))
        emb = torch.from_numpy(embedding(seed))[None]
        assert max_pixel_diff(image, first_stage.generate(emb, seed=seed, **options)) <= 1
