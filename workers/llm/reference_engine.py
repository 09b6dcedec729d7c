"""``ReferenceLLMEngine``: the LLM worker's engine interface on the PyTorch reference, no vLLM.

Where vLLM cannot be installed (the GPU check of issue 15 runs on a machine that has torch and
nothing else it cannot carry as a small wheel), the rest of the stack (gateway, Redis, the job
handler, the diffusion worker) must still be measured with the LLM stage at real width. This
engine gives :class:`workers.llm.handler.LLMJobHandler` what
:class:`~workers.llm.engine.SeedXLLMEngine` gives it (``model_name``, ``tokenizer``,
``image_rules``, ``check``, ``generate``, ``abort``) on :class:`engine.reference.SeedXReference`.

It serves what the reference serves: greedy decoding (§5.5), one choice, text prompts, batch 1,
one generation at a time on a worker thread (the event loop keeps serving heartbeats and
leases). Anything else is refused before any work by :meth:`check` with a ``BadRequest`` naming
the field, which the handler answers as a 400: never a silently different answer. Not for
production traffic: vLLM's continuous batching is what serves concurrent users.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import torch

from engine.arch import IMAGE_BLOCK_TOKENS
from engine.image_rules import ImageRules, rules_from_seedx
from engine.reference import SeedXReference
from workers.llm.prompting import BadRequest
from workers.llm.text import AnswerText
from workers.llm.types import (
    BoxesFound,
    ChoiceFinished,
    Event,
    ImageEmbedding,
    LLMRequest,
    SamplingOptions,
    TextDelta,
    TokenObserver,
    Usage,
)


def _refuse_unsupported(sampling: SamplingOptions) -> None:
    """What the PyTorch reference does not implement: refused, never ignored."""
    refused = {
        "n": (sampling.n != 1, "serves n = 1"),
        "presence_penalty": (bool(sampling.presence_penalty), "does not apply presence_penalty"),
        "frequency_penalty": (
            bool(sampling.frequency_penalty),
            "does not apply frequency_penalty",
        ),
        "stop": (bool(sampling.stop), "does not take stop strings"),
        "logprobs": (sampling.logprobs is not None, "does not return logprobs"),
        "logit_bias": (bool(sampling.logit_bias), "does not apply logit_bias"),
        "response_format": (sampling.structured, "has no grammar backend (JSON answers)"),
    }
    for param, (asked, why) in refused.items():
        if asked:
            raise BadRequest(f"the reference engine {why}", param)


class ReferenceLLMEngine:
    """Greedy SEED-X generation on one reference model, one request at a time."""

    def __init__(self, reference: SeedXReference) -> None:
        self.reference = reference
        self.tokenizer = reference.tokenizer
        seedx = reference.folder.config["seedx"]
        self.model_name: str = seedx["model"]
        self.image_rules: ImageRules = rules_from_seedx(seedx)
        self.max_model_len = int(reference.folder.config.get("max_position_embeddings", 2048))
        self._lock = asyncio.Lock()
        self._cancelled: set[str] = set()

    @classmethod
    def load(
        cls, root: Path, llm: str | None, dtype: torch.dtype, device: str
    ) -> ReferenceLLMEngine:
        """The engine of serving root (or LLM folder) ``root``, on ``device`` in ``dtype``."""
        from engine.runner import load_reference

        return cls(load_reference(root, llm, dtype, device))

    @property
    def alive(self) -> bool:
        return True

    def shutdown(self) -> None:
        """Nothing runs outside this process."""

    def check(self, request: LLMRequest) -> None:
        """Raises ``BadRequest`` (naming the parameter) for what the reference cannot serve
        exactly as asked."""
        sampling = request.sampling
        if sampling.temperature != 0.0:
            raise BadRequest(
                "the reference engine decodes greedily: temperature must be 0", "temperature"
            )
        _refuse_unsupported(sampling)
        if request.images:
            raise BadRequest(
                "the reference engine serves text prompts only (no input images)", "messages"
            )
        ids = request.prompt_ids
        if not ids or ids[0] != self.tokenizer.bos_id:
            raise BadRequest("prompt_ids must start with BOS (build them with build_prompt)")
        if len(ids) + sampling.max_tokens > self.max_model_len:
            raise BadRequest(
                f"prompt ({len(ids)} tokens) + max_tokens ({sampling.max_tokens}) exceeds the "
                f"model's {self.max_model_len} positions",
                "max_tokens",
            )
        if request.image_required and sampling.max_tokens < IMAGE_BLOCK_TOKENS:
            raise BadRequest(
                f"max_tokens must be >= {IMAGE_BLOCK_TOKENS} when an image is required",
                "max_tokens",
            )

    async def generate(
        self, request: LLMRequest, observer: TokenObserver | None = None
    ) -> AsyncIterator[Event]:
        """Yields the answer's text, boxes and images once it is generated, then ``Usage``."""
        self.check(request)
        budget = request.sampling.max_tokens
        force = max(0, budget - IMAGE_BLOCK_TOKENS) if request.image_required else None
        async with self._lock:
            if request.request_id in self._cancelled:
                self._cancelled.discard(request.request_id)
                yield ChoiceFinished(0, "abort", ())
                return
            generation = await asyncio.to_thread(
                self.reference.generate,
                list(request.prompt_ids),
                max_new_tokens=budget,
                force_image_after=force,
            )
        if observer is not None:
            observer.on_tokens(request.request_id, len(generation.output_ids))
        text = AnswerText(self.tokenizer, (), request.box_image_size)
        delta, boxes = text.feed(generation.output_ids)
        delta += text.finish()
        if delta:
            yield TextDelta(0, delta)
        if boxes:
            yield BoxesFound(0, tuple(boxes))
        for index, image in enumerate(generation.images):
            yield ImageEmbedding(0, index, image.embedding, image.query_hidden, image.position)
        reason = "abort" if request.request_id in self._cancelled else generation.finish_reason
        self._cancelled.discard(request.request_id)
        yield ChoiceFinished(0, reason, tuple(generation.output_ids), text.text)
        yield Usage.of(request, len(generation.output_ids), len(generation.images))

    async def abort(self, request_id: str) -> None:
        """Marks ``request_id`` cancelled: a waiting one never starts; a running one finishes
        its forward passes (the reference cannot be interrupted) and reports ``abort``."""
        self._cancelled.add(request_id)
