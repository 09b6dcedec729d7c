"""What the engine wrapper takes and yields. Plain dataclasses: no Redis, no vLLM types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from PIL import Image

from engine.anyres import GlobalViewImage
from engine.arch import NUM_QUERY_TOKENS
from engine.boxes import Box

FinishReason = Literal["stop", "length", "abort"]
# Pixels (any-res tiles + global view), a generated image sent back by the client (its global
# view alone, one <img> block), or a precomputed [n * 64, hidden] embedding.
ImageData = Image.Image | GlobalViewImage | torch.Tensor


class TokenObserver(Protocol):
    """Told when sampled tokens arrive (metrics: TTFT, inter-token latency)."""

    def on_tokens(self, request_id: str, count: int) -> None:
        """``count`` sampled tokens of vLLM request ``request_id`` arrived now."""
        ...


@dataclass(frozen=True)
class SamplingOptions:
    """Decoding parameters. ``temperature == 0`` is SEED-X's greedy default (§5.5)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: off; k: the sampled token's logprob and the k likeliest
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added to the logits
    json_object: bool = False  # the answer is a JSON object (vLLM structured outputs)
    json_schema: str | None = None  # ... matching this JSON schema (JSON text)

    @property
    def structured(self) -> bool:
        """Whether a grammar constrains the answer (no image blocks can open then)."""
        return self.json_object or self.json_schema is not None

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad field."""
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 1 <= self.n <= 16:
            raise ValueError(f"n must be in [1, 16], got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.logprobs}")
        if any(not -100.0 <= bias <= 100.0 for _, bias in self.logit_bias):
            raise ValueError("logit_bias values must be in [-100, 100]")


@dataclass(frozen=True)
class LLMRequest:
    """One generation. ``prompt_ids`` come from ``engine.prompts.build_prompt`` (BOS first,
    image blocks expanded); ``images`` are the prompt's images in order (pixels go through the
    any-res processor inside vLLM, ``GlobalViewImage`` as one picture; tensors are precomputed
    ``[n * 64, hidden]`` embeddings)."""

    request_id: str
    prompt_ids: tuple[int, ...]
    images: tuple[ImageData, ...] = ()
    sampling: SamplingOptions = SamplingOptions()
    image_required: bool = False  # open <img> if the model has not (engine.reference rule)
    box_image_size: tuple[int, int] | None = None  # (w, h) boxes are relative to


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's logprob and the likeliest ids at its position, best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None  # set when the request asked for logprobs


@dataclass(frozen=True)
class BoxesFound:
    """Boxes completed in this delta, in pixels of ``box_image_size``."""

    choice: int
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class ImageEmbedding:
    """A generated image: the visual embedding the de-tokenizer consumes."""

    choice: int
    index: int  # 0, 1, ... within the choice
    embedding: torch.Tensor  # [64, D] output-resampler result
    query_hidden: torch.Tensor  # [64, H] final-norm LLM rows it came from
    position: int  # index of its <img> among the generated ids; -1: the prompt opened it


@dataclass(frozen=True)
class ChoiceFinished:
    choice: int
    reason: FinishReason
    output_ids: tuple[int, ...] = field(repr=False)  # every generated id, forced ones included
    text: str = ""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    images: int
    image_tokens: int = 0  # prompt tokens the input images fill (64 queries per tile or view)

    @classmethod
    def of(cls, request: LLMRequest, completion_tokens: int, images: int) -> Usage:
        """The usage of ``request``: its prompt, of which its images' query tokens, and output."""
        image_tokens = NUM_QUERY_TOKENS * len(request.images)
        return cls(len(request.prompt_ids), completion_tokens, images, image_tokens)


Event = TextDelta | BoxesFound | ImageEmbedding | ChoiceFinished | Usage
