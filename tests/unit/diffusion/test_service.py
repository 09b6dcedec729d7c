"""The handler + dispatcher + runner on the tiny de-tokenizer, without Redis.

The oracle is the engine's own pipeline (``DetokenizerPipeline.generate`` / ``edit`` /
``reconstruct``) with the same seed: the worker must give the same picture alone, and inside a
mixed batch up to the UNet's batch-size rounding (one 8-bit level).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.pipelines import DetokenizerPipeline
from tests.unit.diffusion.support import (
    collect,
    context,
    decode,
    edit_job,
    embedding,
    generate_job,
    max_pixel_diff,
    memory_blobs,
    picture,
    png,
    reconstruct_job,
    worker_settings,
)
from workers.blobs import BlobStore
from workers.diffusion import metrics
from workers.diffusion.worker import DiffusionService, diffusion_service
from workers.protocol import Event, Failed, ImageReady, Job, PartialImage, Usage

Service = tuple[DiffusionService, BlobStore]


@pytest.fixture
async def service(first_stage: DetokenizerPipeline, detok_root: Path) -> AsyncIterator[Service]:
    async with diffusion_service(first_stage, worker_settings(detok_root)) as svc:
        yield svc, memory_blobs()


async def run(svc: Service, *jobs: Job) -> list[list[Event]]:
    """Every job through the handler concurrently (as the worker loop would)."""
    service, blobs = svc
    return list(
        await asyncio.gather(*(collect(service.handler, job, context(job, blobs)) for job in jobs))
    )


async def image_of(events: list[Event], blobs: BlobStore) -> Any:
    ready = [e for e in events if isinstance(e, ImageReady)]
    assert len(ready) == 1, events
    return decode(await blobs.get(ready[0].image))


def embeds(seed: int) -> torch.Tensor:
    return torch.from_numpy(embedding(seed))[None]


async def test_generate_equals_the_engine_pipeline(
    service: Service, first_stage: DetokenizerPipeline
) -> None:
    _, blobs = service
    ref = await blobs.put_tensor(embedding(1))
    (events,) = await run(service, generate_job(ref, seed=11))
    assert [type(e) for e in events] == [ImageReady, Usage]
    ready = events[0]
    assert isinstance(ready, ImageReady)
    assert (ready.width, ready.height, ready.seed, ready.output_format) == (64, 64, 11, "png")
    expected = first_stage.generate(embeds(1), seed=11, height=64, width=64, num_inference_steps=2)
    assert max_pixel_diff(await image_of(events, blobs), expected) == 0


async def test_mixed_batch_of_four_equals_each_job_alone(
    service: Service, first_stage: DetokenizerPipeline
) -> None:
    svc, blobs = service
    refs = [await blobs.put_tensor(embedding(i)) for i in range(3)]
    source = picture(9)
    src = await blobs.put(png(source))
    jobs = [
        generate_job(refs[0], seed=1),
        generate_job(refs[1], seed=2, guidance_scale=1.0),  # unguided: one UNet row
        generate_job(refs[2], seed=3, guidance_scale=3.0),
        reconstruct_job(src, seed=4),
    ]
    sizes_before = metrics.BATCH_SIZE.collect()[0].samples
    results = await run(service, *jobs)
    assert svc.dispatcher.batches == 1
    assert sizes_before != metrics.BATCH_SIZE.collect()[0].samples
    options: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2}
    expected = [
        first_stage.generate(embeds(0), seed=1, **options),
        first_stage.generate(embeds(1), seed=2, guidance_scale=1.0, **options),
        first_stage.generate(embeds(2), seed=3, guidance_scale=3.0, **options),
        first_stage.reconstruct(source, seed=4, **options),
    ]
    for events, reference in zip(results, expected, strict=True):
        assert max_pixel_diff(await image_of(events, blobs), reference) <= 1


async def test_edit_and_conditioned_reconstruction(
    second_stage: DetokenizerPipeline, detok_root: Path
) -> None:
    blobs = memory_blobs()
    settings = worker_settings(detok_root, detokenizer="second_stage")
    async with diffusion_service(second_stage, settings) as svc:
        ref = await blobs.put_tensor(embedding(5))
        source = picture(6)
        src = await blobs.put(png(source))
        edit = edit_job(ref, src, seed=42, image_guidance_scale=1.5)
        rec = reconstruct_job(src, model="second_stage", seed=7)
        edited, reconstructed = await run((svc, blobs), edit, rec)
    options: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2}
    expected_edit = second_stage.edit(embeds(5), source, seed=42, **options)
    expected_rec = second_stage.reconstruct(source, condition=source, seed=7, **options)
    assert max_pixel_diff(await image_of(edited, blobs), expected_edit) <= 1
    assert max_pixel_diff(await image_of(reconstructed, blobs), expected_rec) <= 1


@pytest.mark.parametrize(("output_format", "magic"), [("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
async def test_lossy_formats_with_compression(
    service: Service, output_format: str, magic: bytes
) -> None:
    _, blobs = service
    ref = await blobs.put_tensor(embedding(1))
    sizes = []
    for quality in (10, 95):
        job = generate_job(ref, seed=1, output_format=output_format, output_compression=quality)
        (events,) = await run(service, job)
        ready = events[0]
        assert isinstance(ready, ImageReady)
        assert ready.output_format == output_format
        data = await blobs.get(ready.image)
        assert data.startswith(magic)
        assert ready.image.content_type == f"image/{output_format}"
        sizes.append(len(data))
    assert sizes[0] < sizes[1]  # the compression setting reaches the encoder


async def test_previews_arrive_in_order_before_the_image(service: Service) -> None:
    _, blobs = service
    ref = await blobs.put_tensor(embedding(2))
    (events,) = await run(service, generate_job(ref, steps=4, partial_images=3))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["PartialImage"] * 3 + ["ImageReady", "Usage"]
    previews = [e for e in events if isinstance(e, PartialImage)]
    assert [p.partial_index for p in previews] == [0, 1, 2]
    first = decode(await blobs.get(previews[0].image))
    assert first.size == (8, 8)  # a latent projection at 1/8 of the output


async def test_cancel_mid_run_stops_within_one_step(
    service: Service, first_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, blobs = service
    loop = asyncio.get_running_loop()
    cancelled, kept = [
        generate_job(await blobs.put_tensor(embedding(i)), seed=i, steps=6) for i in (3, 4)
    ]
    ctx = context(cancelled, blobs)
    rows: list[int] = []
    real = first_stage.unet.forward

    def spy(sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        rows.append(sample.shape[0])
        if len(rows) == 2:  # the cancel arrives while step 1 runs
            loop.call_soon_threadsafe(ctx.request_stop, "cancelled")
            time.sleep(0.2)  # let the event loop withdraw the job before this step ends
        return real(sample, timestep, **kwargs)

    monkeypatch.setattr(first_stage.unet, "forward", spy)
    dropped = metrics.DROPPED._value.get()
    stopped, finished = await asyncio.gather(
        collect(svc.handler, cancelled, ctx), collect(svc.handler, kept, context(kept, blobs))
    )
    assert stopped == []  # the worker loop answers Failed(cancelled) for a stopped job
    assert rows == [4, 4, 2, 2, 2, 2]  # from step 2 on, only the kept job's two rows
    assert metrics.DROPPED._value.get() == dropped + 1
    monkeypatch.undo()
    expected = first_stage.generate(embeds(4), seed=4, height=64, width=64, num_inference_steps=6)
    assert max_pixel_diff(await image_of(finished, blobs), expected) <= 1


async def test_cancel_while_waiting_never_runs(service: Service) -> None:
    svc, blobs = service
    job = generate_job(await blobs.put_tensor(embedding(1)))
    ctx = context(job, blobs)
    ctx.request_stop("cancelled")
    assert await collect(svc.handler, job, ctx) == []
    await asyncio.sleep(0.1)
    assert svc.dispatcher.waiting == 0
    assert svc.dispatcher.batches == 0


async def test_head_of_line_incompatible_job_does_not_delay_compatible_ones(
    first_stage: DetokenizerPipeline, detok_root: Path
) -> None:
    blobs = memory_blobs()
    settings = worker_settings(detok_root, max_batch=3, batch_wait_s=0.3)
    async with diffusion_service(first_stage, settings) as svc:
        ref = await blobs.put_tensor(embedding(1))
        odd = generate_job(ref, width=128, seed=0)
        compatible = [generate_job(ref, seed=s) for s in (1, 2, 3)]
        done: dict[str, float] = {}

        async def timed(job: Job) -> None:
            await collect(svc.handler, job, context(job, blobs))
            done[job.job_id] = time.monotonic()

        head = asyncio.create_task(timed(odd))
        await asyncio.sleep(0.01)  # the odd job is first in line
        await asyncio.gather(head, *(timed(job) for job in compatible))
        assert svc.dispatcher.batches == 2  # the three together, then the odd one alone
    # They did not wait for the odd job's window or its batch (FIFO batching would have).
    assert max(done[job.job_id] for job in compatible) < done[odd.job_id]


async def test_oom_splits_the_step_instead_of_failing_it(
    service: Service, first_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blobs = service
    real = first_stage.unet.forward
    rows: list[int] = []

    def small_memory(sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        rows.append(sample.shape[0])
        if sample.shape[0] > 2:  # one job (two guidance rows) at a time fits
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(sample, timestep, **kwargs)

    monkeypatch.setattr(first_stage.unet, "forward", small_memory)
    splits = metrics.OOM_SPLITS._value.get()
    jobs = [generate_job(await blobs.put_tensor(embedding(i)), seed=i) for i in range(4)]
    results = await run(service, *jobs)
    # 8 rows fail, then 4 fail, then each step runs as four calls of one job's two rows
    assert rows == [8, 4] + [2] * 8
    assert metrics.OOM_SPLITS._value.get() == splits + 2
    monkeypatch.undo()
    for i, events in enumerate(results):
        expected = first_stage.generate(embeds(i), seed=i, height=64, width=64,
                                        num_inference_steps=2)  # fmt: skip
        assert max_pixel_diff(await image_of(events, blobs), expected) <= 1


async def test_oom_alone_fails_only_that_job(
    service: Service, first_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blobs = service

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(first_stage.unet, "forward", no_memory)
    (events,) = await run(service, generate_job(await blobs.put_tensor(embedding(1))))
    (failed,) = events
    assert isinstance(failed, Failed)
    assert (failed.error.code, failed.error.param) == ("out_of_memory", "size")


async def test_bad_job_fails_alone_and_the_worker_keeps_serving(service: Service) -> None:
    _, blobs = service
    good = await blobs.put_tensor(embedding(1))
    bad = await blobs.put_tensor(embedding(2))
    await blobs._redis.set(bad.key, b"\x00" * (bad.nbytes or 0))  # checksum no longer matches
    wrong_size = generate_job(good, width=96)
    results = await run(service, generate_job(good), generate_job(bad), wrong_size)
    assert isinstance(results[0][0], ImageReady)
    for events, (code, param) in zip(
        results[1:], [("blob_corrupt", "embedding"), ("invalid_request", "width")], strict=True
    ):
        (failed,) = events
        assert isinstance(failed, Failed)
        assert (failed.error.code, failed.error.param) == (code, param)
    (again,) = await run(service, generate_job(good))
    assert isinstance(again[0], ImageReady)


async def test_prepare_error_fails_only_its_job(
    service: Service, first_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blobs = service
    real = first_stage.prepare_generate

    def flaky(jobs: Any) -> Any:
        if jobs[0].seed == 666:
            raise RuntimeError("boom")
        return real(jobs)

    monkeypatch.setattr(first_stage, "prepare_generate", flaky)
    ref = await blobs.put_tensor(embedding(1))
    ok, broken = await run(service, generate_job(ref, seed=1), generate_job(ref, seed=666))
    assert isinstance(ok[0], ImageReady)
    (failed,) = broken
    assert isinstance(failed, Failed)
    assert failed.error.code == "internal_error"


async def test_deadline_passed_while_waiting_is_not_run(service: Service) -> None:
    svc, blobs = service
    job = generate_job(await blobs.put_tensor(embedding(1)), deadline=time.time() + 0.01)
    await asyncio.sleep(0.05)
    (events,) = await run(service, job)
    (failed,) = events
    assert isinstance(failed, Failed)
    assert failed.error.code == "deadline_exceeded"
    assert svc.dispatcher.batches == 0
