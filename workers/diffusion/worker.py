"""``seedx worker diffusion``: the diffusion worker process (one de-tokenizer, jobs from Redis).

Consumes ``seedx:jobs:diffusion:{model}`` (``model`` defaults to the de-tokenizer name) with the
generic :class:`workers.worker.Worker` loop, which brings leases, heartbeats, deadlines before
start, cancellation and reclaim. The loop holds up to ``held_jobs`` jobs at once (a running batch
plus a batch's worth to choose from); their handlers feed one :class:`BatchDispatcher`, which runs
batches on a single device thread.

SIGTERM/SIGINT drain gracefully: the loop stops taking jobs, the jobs it holds finish within
``queue.shutdown_grace_s`` (the dispatcher keeps batching them), and whatever is left is handed
back to Redis for another worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from engine.pipelines import DetokenizerPipeline
from workers import runloop
from workers.diffusion.batching import BatchPolicy
from workers.diffusion.device_thread import DeviceThread
from workers.diffusion.dispatcher import BatchDispatcher
from workers.diffusion.handler import DiffusionJobHandler
from workers.diffusion.requests import RequestLimits
from workers.diffusion.runner import BatchRunner
from workers.diffusion.settings import DiffusionWorkerSettings
from workers.logcontext import JobContextFilter
from workers.metrics_http import LateLiveness, LoopBeat, metrics_bound_first

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s job=%(job_id)s trace=%(trace_id)s: %(message)s"


def load_pipeline(settings: DiffusionWorkerSettings) -> DetokenizerPipeline:
    """Loads the configured de-tokenizer with its placement and speed options (blocking)."""
    from engine.checkpoint.detokenizer_folder import load_detokenizer
    from engine.runner import detokenizer_folder
    from workers.diffusion.acceleration import SpeedOptions, apply_speed_options, resolve_placement

    placement = resolve_placement(settings.device, settings.dtype)
    folder = detokenizer_folder(settings.model, settings.detokenizer)
    logger.info("loading %s on %s/%s", folder, placement.device, placement.dtype)
    pipeline = load_detokenizer(
        folder, placement.device, placement.dtype, with_vit=settings.load_vit, progress=True
    )
    speed = SpeedOptions(
        attention=settings.attention,
        compile=settings.compile,
        compile_backend=settings.compile_backend,
        compile_mode=settings.compile_mode,
        channels_last=settings.channels_last,
    )
    apply_speed_options(pipeline, speed)
    return pipeline


def request_limits(
    pipeline: DetokenizerPipeline, settings: DiffusionWorkerSettings
) -> RequestLimits:
    """What this worker accepts, from its pipeline and its settings."""
    arch = pipeline.resampler.arch
    return RequestLimits(
        stage=pipeline.stage,
        embedding_dim=arch.embedding_dim,
        embedding_tokens=arch.num_queries,
        can_reconstruct=pipeline.vit is not None,
        max_steps=settings.max_steps,
        max_pixels=settings.max_pixels,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_source_pixels=settings.max_source_pixels,
    )


@dataclass(frozen=True)
class DiffusionService:
    """The running parts of a worker besides the loop: the dispatcher and the job handler."""

    dispatcher: BatchDispatcher
    handler: DiffusionJobHandler


@asynccontextmanager
async def diffusion_service(
    pipeline: DetokenizerPipeline,
    settings: DiffusionWorkerSettings,
    device: DeviceThread | None = None,
) -> AsyncIterator[DiffusionService]:
    """Starts batching on ``pipeline``; stops it (and the encoder threads) on exit. Batches run
    on ``device``, the thread that loaded ``pipeline`` (``workers.diffusion.device_thread``: a
    second torch thread slows both); without one, on a thread of the service's own."""
    runner = BatchRunner(
        pipeline,
        decode_batch=settings.decode_batch,
        vae_tiling_min_side=settings.vae_tiling_min_side,
    )
    policy = BatchPolicy(
        max_batch=settings.max_batch,
        max_batch_pixels=settings.max_batch_pixels,
        wait_s=settings.batch_wait_s,
        starvation_s=settings.starvation_s,
    )
    encoder = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="diffusion-encode")
    thread = device if device is not None else DeviceThread()
    try:
        step_level = settings.batching == "step"
        async with BatchDispatcher(
            runner, policy, device=thread, step_level=step_level
        ) as dispatcher:
            handler = DiffusionJobHandler(dispatcher, request_limits(pipeline, settings), encoder)
            yield DiffusionService(dispatcher, handler)
    finally:
        encoder.shutdown(wait=False, cancel_futures=True)
        if device is None:
            await asyncio.to_thread(thread.close)


async def serve(settings: DiffusionWorkerSettings) -> None:
    """Loads the de-tokenizer, consumes until SIGTERM/SIGINT, drains, exits."""
    # The port is bound before the minutes-long load (``LateLiveness``).
    with metrics_bound_first(settings.metrics_port, settings.metrics_host) as liveness:
        await _serve(settings, liveness)


async def _serve(settings: DiffusionWorkerSettings, liveness: LateLiveness) -> None:
    from workers.startup import check_redis

    await check_redis(settings.redis)  # a wrong password or CA: exit 78 before the model loads
    device = DeviceThread()  # all of this process's torch work, from loading on
    try:
        await _serve_on(settings, liveness, device)
    finally:
        await asyncio.to_thread(device.close)


async def _serve_on(
    settings: DiffusionWorkerSettings, liveness: LateLiveness, device: DeviceThread
) -> None:
    from workers.connection import create_redis
    from workers.worker import Worker

    pipeline = await device.run(load_pipeline, settings)
    if settings.warmup:
        await device.run(BatchRunner(pipeline).warmup)
    beat = LoopBeat()
    beat.start()
    liveness.set(beat.alive)
    redis = create_redis(settings.redis)
    try:
        async with diffusion_service(pipeline, settings, device) as service:
            worker = Worker(
                redis,
                settings.queue,
                stage="diffusion",
                model=settings.stream_model,
                handler=service.handler,
                capacity=settings.held_jobs,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            await worker.run()
    finally:
        await redis.aclose()
        await beat.stop()


def configure_logging(level: str) -> None:
    """Job and trace ids on every line of the process; the worker's loggers at ``level``."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.addFilter(JobContextFilter())
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger("workers").setLevel(level.upper())


def main(
    model: str | None = None,
    *,
    detokenizer: str | None = None,
    redis_url: str | None = None,
    max_batch: int | None = None,
) -> int:
    """Entry of ``seedx worker diffusion``: flags override ``SEEDX_DIFFUSION_*`` settings."""
    overrides: dict[str, object] = {} if model is None else {"model": model}
    if detokenizer is not None:
        overrides["detokenizer"] = detokenizer
    if max_batch is not None:
        overrides["max_batch"] = max_batch
    if redis_url is not None:
        overrides["redis"] = {"url": redis_url}  # merged with SEEDX_DIFFUSION_REDIS__* values
    settings = DiffusionWorkerSettings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_level)
    runloop.run(serve(settings))
    return 0
