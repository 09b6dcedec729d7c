"""Building requests and collecting events for the LLM engine tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.anyres import preprocess_anyres
from engine.prompts import ImageInput, Turn, build_prompt, chat_template
from workers.llm.types import (
    BoxesFound,
    ChoiceFinished,
    ImageEmbedding,
    LLMRequest,
    SamplingOptions,
    TextDelta,
    Usage,
)

_ids = itertools.count()


def request_id(tag: str) -> str:
    return f"{tag}-{next(_ids)}"


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@dataclass
class Collected:
    text: str = ""
    finished: list[ChoiceFinished] = field(default_factory=list)
    images: list[ImageEmbedding] = field(default_factory=list)
    boxes: list[Any] = field(default_factory=list)
    usage: Usage | None = None

    @property
    def output_ids(self) -> list[int]:
        return list(self.finished[0].output_ids)


async def collect(engine: Any, request: LLMRequest) -> Collected:
    out = Collected()
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            out.text += event.text
        elif isinstance(event, ChoiceFinished):
            out.finished.append(event)
        elif isinstance(event, ImageEmbedding):
            out.images.append(event)
        elif isinstance(event, BoxesFound):
            out.boxes += event.boxes
        elif isinstance(event, Usage):
            out.usage = event
    return out


def chat_case(
    engine: Any, reference: Any, images: list[Image.Image], text: str, max_tokens: int = 24
) -> tuple[LLMRequest, list[int], torch.Tensor | None]:
    """An engine request and the reference's inputs for one seed-x-i chat turn."""
    prepared = [preprocess_anyres(image) for image in images]
    turn = Turn("user", text, tuple(ImageInput(p.num_pictures) for p in prepared))
    prompt = build_prompt(engine.tokenizer, chat_template("seed-x-i", [turn]))
    pictures = None
    if prepared:
        pixels = torch.cat([p.pixels for p in prepared])
        centres = torch.cat([p.centres for p in prepared])
        pictures = reference.picture_embeddings(pixels, centres)
    size = prepared[0].original_size if prepared else None
    request = LLMRequest(
        request_id("chat"),
        prompt.ids,
        tuple(images),
        SamplingOptions(max_tokens=max_tokens),
        box_image_size=size,
    )
    return request, list(prompt.ids), pictures
