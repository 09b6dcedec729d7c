"""Request models of the images API: generations (JSON), edits and variations (multipart).

OpenAI's fields, plus SEED-X extras as extra fields (``steps``, ``guidance_scale``,
``image_guidance_scale``, ``seed``): the openai client sends them with ``extra_body``.
``quality`` picks the denoising steps (``server.rendering.steps_for``; ``steps`` wins when both
are set). Fields a GPT-image model has that change nothing here (``moderation``: SEED-X has no
moderation model; ``style``) are accepted; ``background="transparent"`` is refused (SEED-X
renders opaque images), and so is a ``mask`` (SEED-X-Edit edits from the instruction, not a
mask).
"""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from server.errors import InvalidRequest

MAX_PROMPT_CHARS = 32_000


class _ImageOptions(BaseModel):
    """Fields shared by the three image endpoints."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str | None = Field(default=None, max_length=128, description="Default: per endpoint.")
    n: int = Field(default=1, ge=1, le=16, description="Images to produce.")
    size: str | None = Field(default=None, max_length=16, description="WIDTHxHEIGHT or auto.")
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json", description="url: served by GET /v1/images/{id}/content."
    )
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    user: str | None = Field(default=None, max_length=256)
    background: Literal["auto", "opaque", "transparent"] | None = None
    quality: str | None = Field(default=None, max_length=16)
    steps: int | None = Field(default=None, ge=1, description="SEED-X: denoising steps.")
    guidance_scale: float | None = Field(default=None, ge=0, le=50, description="SEED-X.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="SEED-X.")

    def check_supported(self) -> None:
        """400 for options SEED-X cannot honour."""
        if self.background == "transparent":
            raise InvalidRequest("transparent backgrounds are not supported", param="background")

    def source(self) -> UploadFile | None:
        """The uploaded image the request renders from (edits, variations), if any."""
        return None


class _Streaming(BaseModel):
    stream: bool = Field(default=False, description="SSE of partial and completed images.")
    partial_images: int = Field(default=0, ge=0, le=3, description="Previews while denoising.")


class ImageGenerateRequest(_ImageOptions, _Streaming):
    """``POST /v1/images/generations``."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    moderation: str | None = Field(default=None, max_length=16)
    style: str | None = Field(default=None, max_length=16)


class ImageEditForm(_ImageOptions, _Streaming):
    """``POST /v1/images/edits`` (multipart): one source image as ``image`` or ``image[]``."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    image: list[UploadFile] | None = None
    image_array: list[UploadFile] | None = Field(default=None, alias="image[]")
    mask: UploadFile | None = None
    image_guidance_scale: float | None = Field(default=None, ge=0, le=50, description="SEED-X.")
    input_fidelity: str | None = Field(default=None, max_length=16)

    def images(self) -> list[UploadFile]:
        """The uploaded source images, whichever field name the client used."""
        return [*(self.image or []), *(self.image_array or [])]

    def source(self) -> UploadFile | None:
        return self.images()[0]  # check_supported: exactly one

    def check_supported(self) -> None:
        super().check_supported()
        if self.mask is not None:
            raise InvalidRequest(
                "masks are not supported: SEED-X-Edit edits the whole image from the prompt",
                param="mask",
            )
        count = len(self.images())
        if count == 0:
            raise InvalidRequest("an image to edit is required", param="image")
        if count > 1:
            raise InvalidRequest("SEED-X-Edit edits one image per request", param="image")


class ImageVariationForm(_ImageOptions):
    """``POST /v1/images/variations`` (multipart)."""

    image: UploadFile

    def source(self) -> UploadFile | None:
        return self.image


ImagesRequest = ImageGenerateRequest | ImageEditForm | ImageVariationForm
