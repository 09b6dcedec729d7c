"""What the de-tokenizer pipelines take in: job descriptions, the negative features, pixels.

Kept apart from ``engine.pipelines`` so the diffusion worker (issue 5) can build and check jobs
without touching the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.sampling import ParameterError, check_guidance
from engine.vit import QwenViT

# avg_pool1d kernel and stride applied to ViT(zeros) for the LLM paths (vit_down, §2.5, §5.2).
NEGATIVE_POOL = 4
EDIT_DEFAULT_SEED = 42  # SDXLAdapterWithLatentImage.generate default (§8.8)


@dataclass(frozen=True)
class GenerateJob:
    """Text-to-image (§5.2): one visual embedding ``[1, 64, D]`` from the output resampler.

    ``seed=None`` draws a random seed, as the reference does since commit 420d347 (§8.8).
    """

    image_embeds: torch.Tensor
    seed: int | None = None
    guidance_scale: float = 7.5


@dataclass(frozen=True)
class EditJob:
    """SEED-X-Edit (§5.3): the edited image's embedding plus the source image to keep."""

    image_embeds: torch.Tensor
    source: Image.Image
    seed: int | None = EDIT_DEFAULT_SEED
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5


@dataclass(frozen=True)
class ReconstructJob:
    """Variation (§5.4): an image re-drawn from its own 256 ViT tokens.

    With ``condition`` (second stage only) the condition image's latent steers the result with
    three-branch guidance; the reference's conditioned script passes seed 42.
    """

    image: Image.Image
    condition: Image.Image | None = None
    seed: int | None = None
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5


@dataclass(frozen=True)
class NegativeFeatures:
    """ViT features of the all-zeros normalised picture (a flat CLIP-mean image, §7.5).

    ``pooled [1, 64, D]`` (avg_pool1d 4/4 over tokens) is the negative of generation and edit;
    ``tokens [1, 256, D]`` (unpooled) is the negative of reconstruction (§8.3).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor


def pool_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, L, D] -> [B, L/4, D]``: 1-D average over 4 consecutive raster tokens (not 2x2)."""
    pooled = F.avg_pool1d(tokens.transpose(1, 2), kernel_size=NEGATIVE_POOL, stride=NEGATIVE_POOL)
    return pooled.transpose(1, 2)


@torch.no_grad()
def compute_negative_features(vit: QwenViT) -> NegativeFeatures:
    """Runs ``vit`` once on ``zeros [1, 3, S, S]`` in its own dtype and device."""
    side = vit.arch.image_size
    zeros = torch.zeros(1, 3, side, side, dtype=vit.dtype, device=vit.conv1.weight.device)
    tokens = vit(zeros)
    return NegativeFeatures(pooled=pool_tokens(tokens), tokens=tokens)


def vae_pixels(images: list[Image.Image], height: int, width: int) -> torch.Tensor:
    """Condition images for the VAE: PIL bicubic stretch to ``width x height``, mapped to [-1, 1].

    The reference squashes the source to 1024x1024 (aspect ratio not kept, §5.3); the size
    parameter generalises that to the requested output size.
    """
    out = []
    for image in images:
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)
        out.append(array.permute(2, 0, 1) * 2.0 - 1.0)
    return torch.stack(out)


def check_jobs(jobs: Sequence[GenerateJob | EditJob | ReconstructJob]) -> None:
    """At least one job, and every guidance scale in range (``ParameterError`` names it)."""
    if not jobs:
        raise ParameterError("jobs", "must hold at least one job")
    for job in jobs:
        check_guidance("guidance_scale", job.guidance_scale)
        if not isinstance(job, GenerateJob):
            check_guidance("image_guidance_scale", job.image_guidance_scale)


def check_image_embeds(image_embeds: torch.Tensor, width: int) -> torch.Tensor:
    """One visual embedding as ``[1, L, width]`` (``[L, width]`` is accepted), finite.

    Several embeddings in one tensor are refused rather than split: each image is its own job
    with its own negative row (hazard §8.6).
    """
    embeds = image_embeds.unsqueeze(0) if image_embeds.dim() == 2 else image_embeds
    if embeds.dim() != 3 or embeds.shape[0] != 1 or embeds.shape[1] < 1:
        raise ParameterError(
            "image_embeds",
            f"must be one embedding [1, L, {width}], got {tuple(image_embeds.shape)} "
            "(give each embedding its own job)",
        )
    if embeds.shape[2] != width:
        raise ParameterError("image_embeds", f"must have {width} channels, got {embeds.shape[2]}")
    if not torch.isfinite(embeds).all():
        raise ParameterError("image_embeds", "holds NaN or infinite values")
    return embeds
