"""``DiffusionWorkerSettings``: what ``seedx worker diffusion`` can be told (``SEEDX_DIFFUSION_*``).

Built once in ``main`` and passed down (STYLE.md §3); Redis and queue timing are nested as
``SEEDX_DIFFUSION_REDIS__URL`` / ``SEEDX_DIFFUSION_QUEUE__LEASE_S``. Cross-field checks run here
so a bad configuration fails at startup, not on the first job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.settings import QueueSettings, RedisSettings

Stage = Literal["first_stage", "second_stage"]
DTypeName = Literal["auto", "float32", "float16", "bfloat16"]
Attention = Literal["sdpa", "xformers"]

MAX_ENGINE_STEPS = 150  # engine.sampling.MAX_STEPS: the protocol allows more, the engine not


class DiffusionWorkerSettings(BaseSettings):
    """Diffusion worker configuration (``SEEDX_DIFFUSION_*``; Redis as ``..._REDIS__URL``)."""

    model_config = SettingsConfigDict(
        env_prefix="SEEDX_DIFFUSION_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    # --- what to serve -------------------------------------------------------------------------
    model: Path = Field(description="Serving root written by `seedx convert`.")
    detokenizer: Stage = Field(
        default="first_stage",
        description="De-tokenizer to load: first_stage (generate, variations) or second_stage "
        "(edit, conditioned variations).",
    )
    model_name: str | None = Field(
        default=None,
        description="Model id of the job stream seedx:jobs:diffusion:{model_name}; "
        "default: the de-tokenizer name.",
    )
    load_vit: bool = Field(
        default=True,
        description="Load the ViT (needed for image.reconstruct; 1.9 B parameters at full size).",
    )

    # --- device and speed ----------------------------------------------------------------------
    device: str = Field(
        default="auto", description="torch device; auto: cuda if present, else cpu."
    )
    dtype: DTypeName = Field(
        default="auto", description="Compute dtype; auto: float16 on GPU, float32 on CPU."
    )
    attention: Attention = Field(
        default="sdpa", description="Attention kernels: PyTorch SDPA, or xformers (if installed)."
    )
    compile: bool = Field(default=False, description="torch.compile the UNet at startup.")
    compile_backend: str = Field(default="inductor", description="torch.compile backend.")
    compile_mode: str | None = Field(
        default=None, description="torch.compile mode (e.g. max-autotune-no-cudagraphs)."
    )
    channels_last: bool = Field(default=False, description="UNet in channels-last memory format.")
    vae_tiling_min_side: int = Field(
        default=2048,
        ge=0,
        description="Decode with VAE tiling when an image side reaches this (0: always).",
    )
    decode_batch: int = Field(
        default=4, ge=1, le=64, description="Images per VAE decode call (bounds decode memory)."
    )
    warmup: bool = Field(default=True, description="Run one tiny sampling pass at startup.")

    # --- batching --------------------------------------------------------------------------------
    batching: Literal["step", "batch"] = Field(
        default="step",
        description="step: a waiting job joins the running batch at its next denoising step; "
        "batch: it waits for the whole batch to finish (the older policy, for comparison).",
    )
    max_batch: int = Field(default=4, ge=1, le=64, description="Images per UNet batch, at most.")
    max_batch_pixels: int = Field(
        default=8 * 1024 * 1024,
        ge=64 * 64,
        description="Output pixels per batch, at most (large images batch fewer at once).",
    )
    batch_wait_s: float = Field(
        default=0.02,
        ge=0,
        le=5,
        description="How long a job may wait for compatible companions before its batch starts.",
    )
    starvation_s: float = Field(
        default=5.0,
        gt=0,
        description="A job waiting this long is served next, whatever else is waiting.",
    )
    capacity: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Jobs held at once (running + waiting to batch); default 2 x max_batch.",
    )

    # --- request limits --------------------------------------------------------------------------
    max_steps: int = Field(
        default=MAX_ENGINE_STEPS, ge=1, le=MAX_ENGINE_STEPS, description="Largest step count."
    )
    max_pixels: int = Field(
        default=2048 * 2048, ge=64 * 64, description="Largest output width x height."
    )
    max_aspect_ratio: float = Field(
        default=4.0, ge=1, description="Largest long-side / short-side ratio of the output."
    )
    max_source_pixels: int = Field(
        default=4096 * 4096, ge=64 * 64, description="Largest decoded source image (pixels)."
    )

    # --- process ---------------------------------------------------------------------------------
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Port of /metrics and /healthz; unset: off."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address /metrics listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Level of the worker's own log lines (job lifecycle: info)."
    )
    encode_threads: int = Field(
        default=2, ge=1, le=32, description="Threads encoding output images (PNG/JPEG/WebP)."
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)

    @model_validator(mode="after")
    def _check(self) -> DiffusionWorkerSettings:
        if self.capacity is not None and self.capacity < self.max_batch:
            raise ValueError(
                f"capacity ({self.capacity}) must be at least max_batch ({self.max_batch}), "
                "or batches can never fill"
            )
        if self.starvation_s < self.batch_wait_s:
            raise ValueError("starvation_s must be at least batch_wait_s")
        return self

    @property
    def held_jobs(self) -> int:
        """Jobs the worker loop takes at once: a running batch plus a batch's worth to choose from.

        Holding more than one batch is what lets a compatible job overtake an incompatible head.
        """
        return self.capacity if self.capacity is not None else 2 * self.max_batch

    @property
    def stream_model(self) -> str:
        """The model id of the job stream this worker consumes."""
        return self.model_name or self.detokenizer
