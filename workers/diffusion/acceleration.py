"""Where and how fast the de-tokenizer runs: device, dtype, attention kernels, compile, tiling.

Defaults follow the reference and the hardware: float16 on a GPU as the SEED-X scripts run
(bfloat16 on request: trained in bf16, a small numeric deviation, §8.10), float32 on CPU where
half-precision matmuls are slow or missing. Attention uses PyTorch SDPA unless xformers is asked
for, and asking for it without the package installed is a startup error rather than a silent
fallback. ``torch.compile`` and channels-last are opt-in: compile costs minutes at startup and
recompiles per new shape. VAE tiling is switched per batch, on only for large images, because
tiled decoding is slower and can show seams at sizes where the plain decode fits.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from engine.pipelines import DetokenizerPipeline

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    """The device and compute dtype the pipeline is loaded with."""

    device: torch.device
    dtype: torch.dtype


def resolve_placement(device: str, dtype: str) -> Placement:
    """``auto`` resolved: CUDA when present; float16 on CUDA, float32 elsewhere.

    Raises ``ValueError`` for float16 on CPU, where many kernels are missing or slow.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.device(device)
    if dtype == "auto":
        chosen = torch.float16 if where.type == "cuda" else torch.float32
    elif dtype in DTYPES:
        chosen = DTYPES[dtype]
    else:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    if where.type == "cpu" and chosen == torch.float16:
        raise ValueError("float16 on CPU is slow and partly unsupported: use float32 or bfloat16")
    return Placement(where, chosen)


@dataclass(frozen=True)
class SpeedOptions:
    """The opt-in speed knobs of ``DiffusionWorkerSettings``."""

    attention: str = "sdpa"
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    channels_last: bool = False


def _set_attention(pipeline: DetokenizerPipeline, attention: str) -> None:
    if attention == "sdpa":
        pipeline.unet.set_attn_processor(AttnProcessor2_0())  # type: ignore[no-untyped-call]
        pipeline.vae.set_attn_processor(AttnProcessor2_0())  # type: ignore[no-untyped-call]
    elif attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise ValueError("attention=xformers, but the xformers package is not installed")
        pipeline.unet.enable_xformers_memory_efficient_attention()
        pipeline.vae.enable_xformers_memory_efficient_attention()
    else:
        raise ValueError(f"attention must be sdpa or xformers, got {attention!r}")


def apply_speed_options(pipeline: DetokenizerPipeline, options: SpeedOptions) -> None:
    """Configures ``pipeline`` in place; call once, before serving."""
    _set_attention(pipeline, options.attention)
    if options.channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
    if options.compile:
        kwargs: dict[str, Any] = {"backend": options.compile_backend}
        if options.compile_mode is not None:
            kwargs["mode"] = options.compile_mode
        # The compiled wrapper forwards .config/.device/.dtype to the module, which is all the
        # sampling loop reads; shapes vary with the batch, so compile lets them be dynamic.
        pipeline.unet = torch.compile(pipeline.unet, **kwargs)
    logger.info(
        "de-tokenizer on %s/%s: attention=%s compile=%s channels_last=%s",
        pipeline.device,
        pipeline.dtype,
        options.attention,
        options.compile,
        options.channels_last,
    )


def set_vae_tiling(vae: Any, height: int, width: int, min_side: int) -> bool:
    """Tiles the VAE decode for images with a side of at least ``min_side``; returns if on."""
    tiled = max(height, width) >= min_side
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return tiled


def free_device_memory(device: torch.device) -> None:
    """Returns cached blocks after an out-of-memory error, so a smaller retry can fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
