"""Output images: previews from latents, encoded bytes."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from engine.image_output import (
    SDXL_LATENT_RGB,
    SDXL_LATENT_RGB_BIAS,
    encode_image,
    latents_to_preview,
    tensor_to_images,
)


def test_preview_is_the_fixed_linear_map() -> None:
    latents = torch.randn(2, 4, 8, 16)
    previews = latents_to_preview(latents)
    assert [p.size for p in previews] == [(16, 8), (16, 8)]
    y, x = 3, 5
    rgb = latents[1, :, y, x] @ torch.tensor(SDXL_LATENT_RGB) + torch.tensor(SDXL_LATENT_RGB_BIAS)
    expected = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).tolist()
    assert list(previews[1].getpixel((x, y))) == expected


def test_preview_rejects_non_latents() -> None:
    with pytest.raises(ValueError, match="`latents`"):
        latents_to_preview(torch.zeros(1, 3, 8, 8))


def test_tensor_to_images_maps_minus_one_to_one() -> None:
    (image,) = tensor_to_images(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1))
    assert image.getpixel((0, 0)) == (0, 128, 255)


@pytest.mark.parametrize(
    ("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")]
)
def test_encode_round_trips(fmt: str, pil: str) -> None:
    image = Image.new("RGB", (32, 16), (200, 30, 60))
    data = encode_image(image, fmt, quality=80)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == pil
    assert decoded.size == (32, 16)


def test_jpeg_quality_changes_size() -> None:
    image = tensor_to_images(torch.rand(1, 3, 64, 64) * 2 - 1)[0]
    assert len(encode_image(image, "jpeg", quality=10)) < len(
        encode_image(image, "jpeg", quality=95)
    )


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"output_format": "gif"}, "output_format"), ({"quality": 101}, "quality")],
)
def test_bad_encode_arguments(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ValueError, match=f"`{param}`"):
        encode_image(Image.new("RGB", (4, 4)), **kwargs)  # type: ignore[arg-type]
