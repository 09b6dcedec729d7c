"""Turning chat outputs into the answer: one ``chat.completion``, or SSE chunks.

Both paths consume the iterator of :func:`server.chat.service.run_chat` *after* its
``Accepted``. A stream ends with one error frame and ``[DONE]`` when a job fails mid-way
(STYLE.md §4); the non-streamed path raises and the error handlers answer with the status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.chat.render import ChoiceState, ChunkWriter, annotation, completion, finish_reason
from server.chat.service import Accepted
from server.errors import error_frame
from server.metrics import TTFT
from server.orchestrate import BoxesFound, Finished, Image, Output, Text
from server.published import ImagePublisher
from server.rendering import ResponseFormat, image_url
from server.sse import DONE
from workers.errors import TransportError

logger = logging.getLogger(__name__)

ROUTE = "/v1/chat/completions"


@dataclass(frozen=True)
class AnswerContext:
    """What rendering needs besides the outputs."""

    completion_id: str
    created: int
    model: str
    n: int
    started: float
    response_format: ResponseFormat
    publisher: ImagePublisher
    base_url: str
    logprobs: bool = False

    async def url(self, image: Image) -> str:
        """The URL the client gets for ``image``."""
        return await image_url(
            image.data, image.output_format, self.response_format, self.publisher, self.base_url
        )


class _FirstToken:
    def __init__(self, started: float) -> None:
        self._started = started
        self._seen = False

    def mark(self) -> None:
        if not self._seen:
            self._seen = True
            TTFT.labels(ROUTE).observe(time.perf_counter() - self._started)


async def collect_completion(
    outputs: AsyncIterator[Accepted | Output], ctx: AnswerContext
) -> dict[str, Any]:
    """Consume every output and build the ``chat.completion`` object."""
    choices = [ChoiceState(logprobs=[] if ctx.logprobs else None) for _ in range(ctx.n)]
    totals = Finished()
    first = _FirstToken(ctx.started)
    async for output in outputs:
        if isinstance(output, Text) and output.choice < ctx.n:
            first.mark()
            state = choices[output.choice]
            state.text.append(output.text)
            if state.logprobs is not None and output.logprobs:
                state.logprobs += output.logprobs
        elif isinstance(output, BoxesFound) and output.choice < ctx.n:
            choices[output.choice].annotations += [annotation(box) for box in output.boxes]
        elif isinstance(output, Image) and output.choice < ctx.n:
            first.mark()
            choices[output.choice].images[output.index] = await ctx.url(output)
        elif isinstance(output, Finished):
            totals = output
    return completion(ctx.completion_id, ctx.created, ctx.model, choices, totals)


async def stream_chunks(
    outputs: AsyncIterator[Accepted | Output], ctx: AnswerContext, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE frames: role chunks, deltas as they come, finish chunks, usage, ``[DONE]``."""
    writer = ChunkWriter(ctx.completion_id, ctx.created, ctx.model, include_usage)
    first = _FirstToken(ctx.started)
    try:
        for choice in range(ctx.n):
            yield writer.role(choice)
        async for output in outputs:
            for frame in await _frames(output, writer, ctx, first):
                yield frame
    except TransportError as exc:
        logger.warning("chat stream %s failed: %s %s", ctx.completion_id, exc.code, exc.message)
        yield error_frame(exc)
        return
    except Exception as exc:
        logger.exception("chat stream %s failed", ctx.completion_id)
        yield error_frame(exc)
        return
    yield DONE


async def _frames(
    output: Accepted | Output, writer: ChunkWriter, ctx: AnswerContext, first: _FirstToken
) -> list[bytes]:
    """The chunks one output becomes (none for outputs a stream does not show)."""
    if isinstance(output, Text) and (output.text or output.logprobs):
        first.mark()
        return [writer.text(output.choice, output.text, output.logprobs)]
    if isinstance(output, BoxesFound):
        return [writer.boxes(output.choice, output.boxes)]
    if isinstance(output, Image):
        first.mark()
        return [writer.image(output.choice, await ctx.url(output))]
    if isinstance(output, Finished):
        frames = [writer.finish(choice, finish_reason(output, choice)) for choice in range(ctx.n)]
        return frames + ([writer.usage(output)] if writer.include_usage else [])
    return []
