"""One answer (one choice) of a generation: vLLM requests split at generated images.

The reference decodes greedily and, once ``<img>`` is the last token, forces the 64 query tokens
and ``</img>`` (§5.5). Here every vLLM request stops on ``<img>`` (and on a query token, which
the reference's 0.0 suppression can let through, §8.5), then the forced rest of the block is
written as **prompt** tokens of the next request: one prefill pass computes the 64 query rows
(causal attention makes it equal to 65 forced steps), the capture extension records their
final-norm states under a content key, and the same request goes on decoding after ``</img>``.
Prefix caching makes the resubmission cost only the new tokens. Budgets, positions and finish
reasons follow ``engine.reference.SeedXReference.generate`` exactly:

* ``max_tokens`` counts every generated id, forced ones included; a block cut by the budget
  yields no image (the reference's capture needs the whole block);
* an image is emitted only for a complete block opened by ``<img>``;
* ``image_required`` opens ``<img>`` (EOS becomes ``<img>``; after ``max_tokens - 66`` tokens it
  is forced) until the first image, as ``force_image_after`` does.

A grammar-constrained (JSON) answer masks every image token (``rules_args(no_images=True)``), so
it is one vLLM request and the grammar sees the whole answer. Logprobs are those of the sampled
tokens that render as text (image blocks and EOS are not content); each text delta carries the
entries of the tokens rendered since the previous one.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from engine.arch import IMAGE_BLOCK_TOKENS
from engine.vllm_plugin.capture import capture_args
from engine.vllm_plugin.ids import SeedXTokenIds
from engine.vllm_plugin.rules import rules_args
from workers.llm.text import AnswerText
from workers.llm.types import (
    BoxesFound,
    ChoiceFinished,
    Event,
    FinishReason,
    ImageEmbedding,
    LLMRequest,
    SamplingOptions,
    TextDelta,
    TokenLogprob,
)

Step = tuple[list[int], str | None, list[TokenLogprob] | None]
"""One output of a vLLM request: new token ids, finish reason or None, their logprobs."""


class SegmentRunner(Protocol):
    """What a choice needs from the engine: run one vLLM request, fetch captured images."""

    def stream(
        self, request_id: str, ids: list[int], params: SamplingParams
    ) -> AsyncIterator[Step]:
        """Yields the steps of one vLLM request (logprobs None unless ``params`` asks)."""
        ...

    async def take_image(self, key: str, ids: list[int]) -> tuple[Any, Any]:
        """``(rows [64, H], embedding [64, D])`` captured under ``key`` for prompt ``ids``."""
        ...


@dataclass
class ChoiceSettings:
    suppress: float
    image_hash: str  # content hash of the request's images (part of every capture key)


def _structured(sampling: SamplingOptions) -> StructuredOutputsParams | None:
    if sampling.json_schema is not None:
        return StructuredOutputsParams(json=sampling.json_schema)
    if sampling.json_object:
        return StructuredOutputsParams(json_object=True)
    return None


def _segment_seed(seed: int | None, choice: int, segment: int) -> int | None:
    if seed is None:
        return None
    return (seed + 1_000_003 * choice + 7_919 * segment) % 2**63


class ChoiceRun:
    """Generates choice ``choice`` of ``request``; :meth:`events` yields its events."""

    def __init__(
        self,
        request: LLMRequest,
        choice: int,
        ids: SeedXTokenIds,
        text: AnswerText,
        runner: SegmentRunner,
        settings: ChoiceSettings,
        is_cancelled: Callable[[], bool],
    ) -> None:
        self.request, self.choice, self.tok = request, choice, ids
        self.text, self.runner, self.settings = text, runner, settings
        self.is_cancelled = is_cancelled
        self.context = list(request.prompt_ids)
        self.output: list[int] = []
        self.images = 0
        self.segment = 0
        self.logprobs: list[TokenLogprob] | None = (
            None if request.sampling.logprobs is None else []
        )  # entries of rendered tokens not yet sent with a delta
        budget = request.sampling.max_tokens
        self.force_after = max(0, budget - IMAGE_BLOCK_TOKENS) if request.image_required else None

    @property
    def budget_left(self) -> int:
        return self.request.sampling.max_tokens - len(self.output)

    async def events(self) -> AsyncIterator[Event]:
        last = self.context[-1]
        opened: int | None = None
        if last in self.tok.block_openers:
            opened = self.tok.block_openers.index(last)
        reason: FinishReason | None = None
        while reason is None:
            capture: tuple[str, int] | None = None
            if opened is not None:
                capture, reason = self._force_block(opened)
                opened = None
                if reason is not None:
                    break
            elif self.budget_left <= 0:
                reason = "length"
                break
            async for event in self._segment(capture):
                if isinstance(event, ChoiceFinished):
                    reason = event.reason
                    break
                yield event
            if reason is None:  # stopped on a block opener: force the block next
                opened = self.tok.block_openers.index(self.output[-1])
        # Text held back (for stop strings, or an unfinished character) ends the answer, on
        # every path: a budget that runs out inside an image block ends it too.
        tail = self.text.finish()
        if tail or self.logprobs:
            yield self._delta(tail)
        yield self._finish(reason)

    def _force_block(self, start: int) -> tuple[tuple[str, int] | None, FinishReason | None]:
        """Appends the forced tokens after ``image_sequence[start]``; returns the capture (key,
        first query position) for a complete block, and a finish reason when nothing remains."""
        forced = list(self.tok.image_sequence[start + 1 :][: max(0, self.budget_left)])
        self.output += forced
        self.context += forced
        self.text.feed(forced)
        if start == 0 and len(forced) == IMAGE_BLOCK_TOKENS - 1:
            first_query = len(self.context) - IMAGE_BLOCK_TOKENS + 1
            return (self._capture_key(first_query), first_query), None
        return None, ("length" if self.budget_left <= 0 else None)

    def _capture_key(self, first_query: int) -> str:
        digest = hashlib.sha256(self.settings.image_hash.encode())
        digest.update(repr(self.context[: first_query + 64]).encode())
        return digest.hexdigest()

    def _params(self, capture: tuple[str, int] | None) -> SamplingParams:
        sampling = self.request.sampling
        extra: dict[str, Any] = {}
        force = None
        if self.force_after is not None and not self.images:
            force = max(0, self.force_after - len(self.output))
        extra.update(rules_args(self.settings.suppress, force, no_images=sampling.structured))
        if capture is not None:
            extra.update(capture_args(*capture))
        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=_segment_seed(sampling.seed, self.choice, self.segment),
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            logprobs=sampling.logprobs,
            logit_bias=dict(sampling.logit_bias) or None,
            structured_outputs=_structured(sampling),
            max_tokens=max(1, self.budget_left),
            stop_token_ids=[self.tok.eos, *self.tok.block_openers],
            ignore_eos=True,  # EOS is in stop_token_ids (the engine runs without a tokenizer)
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            extra_args=extra,
        )

    async def _segment(self, capture: tuple[str, int] | None) -> AsyncIterator[Event]:
        """Runs one vLLM request; ends with a ChoiceFinished unless it stopped on an opener."""
        params = self._params(capture)
        request_id = f"{self.request.request_id}-c{self.choice}-s{self.segment}"
        self.segment += 1
        exhausted = self.budget_left <= 0  # the block took the last tokens: rows only
        pending = capture
        steps = self.runner.stream(request_id, list(self.context), params)
        async for new_ids, finish, logprobs in steps:
            if pending is not None:
                yield await self._image(*pending)
                pending = None
                if exhausted:
                    yield self._finish("length")
                    return
            if self.is_cancelled():
                yield self._finish("abort")
                return
            for event in self._consume(new_ids, logprobs):
                yield event
            if self.text.stopped:
                yield self._finish("stop")
                return
            if finish is not None:
                last = self.output[-1] if self.output else None
                if finish == "stop" and last in self.tok.block_openers:
                    return
                yield self._finish("stop" if finish == "stop" else "length")
                return
        yield self._finish("abort")

    def _consume(self, new_ids: list[int], logprobs: list[TokenLogprob] | None) -> list[Event]:
        self.output += new_ids
        self.context += new_ids
        before = len(self.text.ids)
        text, boxes = self.text.feed(new_ids)
        if self.logprobs is not None and logprobs is not None:
            fed = len(self.text.ids) - before  # a stop string ends the answer inside the batch
            self.logprobs += [e for e in logprobs[:fed] if self.text.shows(e.token_id)]
        events: list[Event] = []
        if text:
            events.append(self._delta(text))
        if boxes:
            events.append(BoxesFound(self.choice, tuple(boxes)))
        return events

    async def _image(self, key: str, first_query: int) -> ImageEmbedding:
        rows, embedding = await self.runner.take_image(key, self.context[: first_query + 65])
        position = first_query - 1 - len(self.request.prompt_ids)
        self.images += 1
        return ImageEmbedding(self.choice, self.images - 1, embedding, rows, max(-1, position))

    def _delta(self, text: str) -> TextDelta:
        """A text delta, with the logprobs of the tokens rendered since the last one."""
        entries = None
        if self.logprobs is not None:
            entries, self.logprobs = tuple(self.logprobs), []
        return TextDelta(self.choice, text, entries)

    def _finish(self, reason: FinishReason) -> ChoiceFinished:
        return ChoiceFinished(self.choice, reason, tuple(self.output), self.text.text)
