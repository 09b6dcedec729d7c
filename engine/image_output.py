"""Turning decoded pixels or raw latents into images and encoded bytes.

``latents_to_preview`` is the cheap partial-image path of issue 5: a fixed linear map from the
4 SDXL latent channels to RGB, no VAE. Its coefficients are ComfyUI's ``SDXL.latent_rgb_factors``
and ``latent_rgb_factors_bias`` (``comfy/latent_formats.py``), a least-squares fit of decoded
colours against *scaled* SDXL latents (the space diffusers samples in), giving roughly [-1, 1]
colours at 1/8 resolution. It is an approximation for previews only: colours are off and early,
noisy latents look like noise.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

SDXL_LATENT_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """``[n, 3, H, W]`` in [-1, 1] -> RGB PIL images, rounded as diffusers' ``numpy_to_pil``."""
    array = (pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(img) for img in (array * 255).round().astype(np.uint8)]


@torch.no_grad()
def latents_to_preview(latents: torch.Tensor) -> list[Image.Image]:
    """``[n, 4, h, w]`` scaled SDXL latents -> n RGB previews of ``w x h`` (1/8 of the output)."""
    if latents.dim() != 4 or latents.shape[1] != len(SDXL_LATENT_RGB):
        raise ValueError(f"`latents` must be [n, 4, h, w], got {tuple(latents.shape)}")
    weight = torch.tensor(SDXL_LATENT_RGB, dtype=torch.float32)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = latents.detach().float().cpu().permute(0, 2, 3, 1) @ weight + bias  # [n, h, w, 3]
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return [Image.fromarray(img) for img in array]


def encode_image(
    image: Image.Image, output_format: str = "png", quality: int | None = None
) -> bytes:
    """Encodes ``image`` as PNG, JPEG or WebP bytes.

    ``quality`` (0-100) applies to JPEG and WebP (default 90); PNG is always lossless with zlib
    level 6 (``compress_level``), the size/speed middle ground. Bad arguments raise ``ValueError``
    naming the parameter.
    """
    key = output_format.lower()
    if key == "jpg":
        key = "jpeg"
    if key not in FORMATS:
        raise ValueError(f"`output_format` must be one of {sorted(FORMATS)}, got {output_format!r}")
    if quality is not None and not (isinstance(quality, int) and 0 <= quality <= 100):
        raise ValueError(f"`quality` must be an int in [0, 100], got {quality!r}")
    buffer = io.BytesIO()
    rgb = image.convert("RGB")
    if key == "png":
        rgb.save(buffer, format="PNG", compress_level=6)
    elif key == "jpeg":
        rgb.save(buffer, format="JPEG", quality=90 if quality is None else quality, optimize=True)
    else:
        rgb.save(buffer, format="WEBP", quality=90 if quality is None else quality, method=4)
    return buffer.getvalue()
