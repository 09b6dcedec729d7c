"""``seedx worker llm``: the LLM worker process (one vLLM engine, jobs from Redis).

Consumes ``seedx:jobs:llm:{model}`` with the generic :class:`workers.worker.Worker` loop
(leases, heartbeats, deadlines, cancellation, drain on SIGTERM) and runs up to ``capacity`` jobs
concurrently on one :class:`~workers.llm.engine.SeedXLLMEngine`, where vLLM batches them.
Prometheus metrics (``workers.metrics``, ``workers.llm.metrics`` and vLLM's own ``vllm:*``) are
served on ``metrics_port`` with a liveness probe at ``/healthz`` (200 while the engine is alive);
readiness is the Redis heartbeat the gateway reads.

vLLM's engine core is a child process (``VLLM::EngineCore``); when it dies (killed, out of
memory) ``AsyncLLM.errored`` turns true and every request fails with ``EngineDeadError``, and
nothing in vLLM restarts it. The worker then leaves (``Worker.fail``, polled on
``engine.alive``): its heartbeat is deleted at once, the jobs it holds are handed back
unacknowledged, and the process exits with code ``WorkerDied.exit_code`` (3) so that its
supervisor (``seedx serve``, Kubernetes) starts a fresh one, which takes those jobs over.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers import runloop
from workers.settings import QueueSettings, RedisSettings

if TYPE_CHECKING:
    from workers.metrics_http import LateLiveness

logger = logging.getLogger(__name__)


class LLMWorkerSettings(BaseSettings):
    """LLM worker configuration (``SEEDX_LLM_*``; Redis as ``SEEDX_LLM_REDIS__URL``)."""

    model_config = SettingsConfigDict(
        env_prefix="SEEDX_LLM_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    model: Path = Field(
        description="Serving LLM folder (or serving root) written by `seedx convert`."
    )
    model_name: str | None = Field(
        default=None, description="Model id of the job stream; default: the folder's model."
    )
    capacity: int = Field(default=32, ge=1, le=1024, description="Jobs run at once.")
    dtype: str = Field(default="auto", description="vLLM dtype (auto: the checkpoint's).")
    max_model_len: int = Field(default=2048, ge=256, description="Context length (SEED-X: 2048).")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory (CPU: host RAM) for vLLM."
    )
    kv_cache_bytes: int | None = Field(
        default=None,
        ge=1 << 20,
        description=(
            "KV cache size in bytes; overrides gpu_memory_utilization. On CPU hosts prefer it: "
            "vLLM's CPU backend takes the utilization share of one NUMA node's RAM, less what "
            "the worker already holds, which is machine-dependent."
        ),
    )
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs / compile.")
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "GPUs the LLaMA trunk is sharded over (vLLM tensor parallelism: attention heads, "
            "MLP, embedding and lm_head split, one process per GPU); the ViT and resamplers are "
            "replicated on each. Must divide the model's attention heads, KV heads, MLP width "
            "and padded vocabulary (SEED-X 17B: 1, 2, 4 or 8); checked at start-up (exit 78)."
        ),
    )
    quantization: Literal["fp8"] | None = Field(
        default=None,
        description=(
            "fp8: vLLM's online fp8 quantization of the LLaMA trunk's linear layers (weights "
            "quantized at load, per-tensor scales; embedding, lm_head, ViT and resamplers stay "
            "in the checkpoint's fp16/bf16). Needs NVIDIA GPUs of compute capability 8.9 or "
            "newer (Ada, Hopper) and a 16-bit dtype; refused at start-up elsewhere (exit 78)."
        ),
    )
    structured_outputs: bool = Field(
        default=True,
        description=(
            "JSON answers (response_format json_object / json_schema) through vLLM's grammar "
            "backend, which loads the folder's tokenizer in vLLM; off: such requests get a 400."
        ),
    )
    strict_suppression: bool = Field(
        default=False, description="-inf instead of the reference's 0.0 for image tokens (§8.5)."
    )
    query_row_cache: int = Field(
        default=256,
        ge=1,
        le=65536,
        description=(
            "Image-query row blocks kept in the engine process after they were read, so a prompt "
            "served from the prefix cache needs no recompute (64 x hidden x dtype bytes each: "
            "640 KiB for SEED-X 17B in bf16)."
        ),
    )
    metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Port of /metrics and /healthz; 0: off."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address /metrics listens on.")
    redis: RedisSettings = Field(default_factory=RedisSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)


async def serve(settings: LLMWorkerSettings) -> None:
    """Starts the engine, consumes until SIGTERM/SIGINT, drains, shuts the engine down.

    The metrics port is bound before anything heavy is imported or started (``LateLiveness``).
    """
    from workers.metrics_http import metrics_bound_first

    with metrics_bound_first(settings.metrics_port or None, settings.metrics_host) as liveness:
        await _serve(settings, liveness)


async def _serve(settings: LLMWorkerSettings, liveness: LateLiveness) -> None:
    from engine.loading import LlmFolder, resolve_llm_folder
    from workers.connection import create_redis
    from workers.llm.engine import EngineConfig, SeedXLLMEngine
    from workers.llm.handler import LLMJobHandler
    from workers.llm.metrics import LLMMetrics, SchedulerStatsLogger
    from workers.startup import check_redis
    from workers.worker import Worker

    await check_redis(settings.redis)  # a wrong password or CA: exit 78 before the model loads
    folder = resolve_llm_folder(settings.model)
    model = settings.model_name or LlmFolder.read(folder).model
    config = EngineConfig(
        folder,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        quantization=settings.quantization,
        kv_cache_bytes=settings.kv_cache_bytes,
        max_num_seqs=max(settings.capacity, 8),
        strict_suppression=settings.strict_suppression,
        structured_outputs=settings.structured_outputs,
        capture_entries=settings.query_row_cache,
    )
    engine = await SeedXLLMEngine.start(config, [SchedulerStatsLogger.factory(model)])
    liveness.set(lambda: engine.alive)
    redis = create_redis(settings.redis)
    worker = Worker(
        redis,
        settings.queue,
        stage="llm",
        model=model,
        handler=LLMJobHandler(engine, LLMMetrics(model)),
        capacity=settings.capacity,
        alive=lambda: engine.alive,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await redis.aclose()
        engine.shutdown()


def main(
    model: str | None = None,
    redis_url: str | None = None,
    capacity: int | None = None,
    tensor_parallel_size: int | None = None,
) -> int:
    """Entry of ``seedx worker llm``: flags override ``SEEDX_LLM_*`` settings."""
    overrides: dict[str, object] = {}
    if model is not None:
        overrides["model"] = Path(model)
    if capacity is not None:
        overrides["capacity"] = capacity
    if tensor_parallel_size is not None:
        overrides["tensor_parallel_size"] = tensor_parallel_size
    if redis_url is not None:
        overrides["redis"] = {"url": redis_url}  # merged with SEEDX_LLM_REDIS__* values
    settings = LLMWorkerSettings(**overrides)  # type: ignore[arg-type]
    from workers.worker import WorkerDied

    try:
        runloop.run(serve(settings))
    except WorkerDied as exc:
        logger.error("exiting with code %d: %s", WorkerDied.exit_code, exc)
        return WorkerDied.exit_code
    return 0
