"""Image options shared by chat and the images API: validation into diffusion job fields, and
rendering a finished image as ``b64_json``, a ``data:`` URL or one of our content URLs.

Size: ``WIDTHxHEIGHT`` (or ``auto``), each side a multiple of 64 within
``bounds.min_size``..``bounds.max_size``: what the de-tokenizer samples
(``engine.sampling.SIZE_MULTIPLE``; a test holds the two equal), checked here so a bad size is a
400 naming ``size`` before any model work, not a refusal after the LLM stage ran.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Literal

from server.errors import InvalidRequest
from server.published import CONTENT_TYPES, ImagePublisher
from server.settings import Bounds

SIZE_MULTIPLE = 64  # engine.sampling.SIZE_MULTIPLE (the gateway does not import torch)
IMAGE_BLOCK_TOKENS = 66
"""``engine.arch.IMAGE_BLOCK_TOKENS``: ``<img>``, 64 queries, ``</img>``; an answer that must
hold an image needs at least this many tokens (a test holds the two equal)."""

ResponseFormat = Literal["b64_json", "url"]
OutputFormat = Literal["png", "jpeg", "webp"]


def parse_size(size: str | None, bounds: Bounds, param: str = "size") -> tuple[int, int]:
    """``"768x512"`` -> ``(768, 512)``, checked against ``bounds``; None/"auto": the default."""
    text = bounds.default_size if size in (None, "", "auto") else str(size)
    width_text, sep, height_text = text.lower().partition("x")
    if not sep or not width_text.isdigit() or not height_text.isdigit():
        raise InvalidRequest(f"size must be WIDTHxHEIGHT or auto, got {text!r}", param=param)
    width, height = int(width_text), int(height_text)
    for side in (width, height):
        if not bounds.min_size <= side <= bounds.max_size or side % SIZE_MULTIPLE:
            raise InvalidRequest(
                f"size {width}x{height}: each side must be a multiple of {SIZE_MULTIPLE} in "
                f"{bounds.min_size}..{bounds.max_size}",
                param=param,
            )
    return width, height


QUALITIES = ("low", "medium", "high", "auto", "standard", "hd")
"""OpenAI's ``quality`` values (GPT-image's, and DALL-E 3's standard / hd)."""


def steps_for(quality: str | None, bounds: Bounds, param: str = "quality") -> int:
    """Denoising steps of an OpenAI ``quality``: low is half the operator's default steps,
    medium / auto / standard the default, high / hd twice it (at most ``max_steps``)."""
    default = bounds.default_steps
    if quality not in (None, *QUALITIES):
        raise InvalidRequest(f"quality must be one of {', '.join(QUALITIES)}", param=param)
    if quality == "low":
        return max(1, math.ceil(default / 2))
    if quality in ("high", "hd"):
        return min(bounds.max_steps, 2 * default)
    return default


@dataclass(frozen=True)
class ImageSpec:
    """Validated options of the images a request produces."""

    width: int
    height: int
    steps: int
    guidance_scale: float | None
    seed: int | None
    output_format: OutputFormat
    output_compression: int | None
    partial_images: int = 0

    @classmethod
    def build(
        cls,
        bounds: Bounds,
        *,
        size: str | None,
        steps: int | None,
        guidance_scale: float | None,
        seed: int | None,
        output_format: OutputFormat,
        output_compression: int | None,
        partial_images: int = 0,
        param_prefix: str = "",
    ) -> ImageSpec:
        """Check the options against ``bounds``; 400 naming the parameter."""
        width, height = parse_size(size, bounds, param_prefix + "size")
        if steps is not None and not 1 <= steps <= bounds.max_steps:
            raise InvalidRequest(
                f"steps must be in 1..{bounds.max_steps}", param=param_prefix + "steps"
            )
        if output_compression is not None and output_format == "png":
            raise InvalidRequest(
                "output_compression applies to jpeg and webp only",
                param=param_prefix + "output_compression",
            )
        return cls(
            width,
            height,
            steps or bounds.default_steps,
            guidance_scale,
            seed,
            output_format,
            output_compression,
            partial_images,
        )

    def job_fields(self, ordinal: int) -> dict[str, Any]:
        """Diffusion job fields for the ``ordinal``-th image (seeds step by one per image)."""
        fields: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "seed": None if self.seed is None else (self.seed + ordinal) % 2**63,
            "output_format": self.output_format,
            "output_compression": self.output_compression,
            "partial_images": self.partial_images,
        }
        if self.guidance_scale is not None:
            fields["guidance_scale"] = self.guidance_scale
        return fields

    @property
    def size(self) -> str:
        """``WIDTHxHEIGHT``."""
        return f"{self.width}x{self.height}"


def data_url(data: bytes, output_format: str) -> str:
    """A ``data:`` URL of an encoded image."""
    content_type = CONTENT_TYPES.get(output_format, "application/octet-stream")
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


async def image_url(
    data: bytes,
    output_format: str,
    response_format: ResponseFormat,
    publisher: ImagePublisher,
    base_url: str,
) -> str:
    """The URL a client gets for an image: a data URL, or a content URL (published now)."""
    if response_format == "url":
        return publisher.url(base_url, await publisher.publish(data, output_format))
    return data_url(data, output_format)
