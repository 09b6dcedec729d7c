"""Images answers: OpenAI's ``ImagesResponse``, or its image streaming events.

A stream sends ``{prefix}.partial_image`` for every preview and ``{prefix}.completed`` for every
finished image (``prefix`` is ``image_generation`` or ``image_edit``), always as ``b64_json`` (as
OpenAI does), then ``[DONE]``; an extra ``image_index`` field tells the images of ``n > 1``
apart. A job failing mid-stream ends it with one error frame and ``[DONE]``. Both paths raise /
report :class:`~workers.errors.WorkerFailed` when the model produced fewer images than asked.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.chat.service import Accepted
from server.errors import error_frame
from server.orchestrate import Finished, Image, Output, Partial, TokenUsage
from server.published import ImagePublisher
from server.rendering import ImageSpec, ResponseFormat, image_url
from server.sse import DONE, data_frame
from workers.errors import TransportError, WorkerFailed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagesContext:
    """What rendering needs besides the outputs."""

    request_id: str
    n: int
    spec: ImageSpec
    response_format: ResponseFormat
    publisher: ImagePublisher
    base_url: str
    event_prefix: str = "image_generation"
    usage: bool = True


def _usage(totals: Finished | TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": totals.prompt_tokens,
        "input_tokens_details": {
            "text_tokens": totals.prompt_tokens - totals.image_tokens,
            "image_tokens": totals.image_tokens,
        },
        "output_tokens": totals.completion_tokens,
        "total_tokens": totals.prompt_tokens + totals.completion_tokens,
    }


def _check_count(totals: Finished, n: int) -> None:
    if totals.images < n:
        raise WorkerFailed(f"the model produced {totals.images} of {n} requested images")


async def collect_images(
    outputs: AsyncIterator[Accepted | Output], ctx: ImagesContext
) -> dict[str, Any]:
    """Consume every output and build the ``ImagesResponse`` object."""
    images: dict[int, Image] = {}
    totals = Finished()
    async for output in outputs:
        if isinstance(output, Image):
            images[output.index] = output
        elif isinstance(output, Finished):
            totals = output
    _check_count(totals, ctx.n)
    data = []
    for index in sorted(images):
        image = images[index]
        if ctx.response_format == "url":
            url = await image_url(
                image.data, image.output_format, "url", ctx.publisher, ctx.base_url
            )
            data.append({"url": url, "revised_prompt": None})
        else:
            data.append({"b64_json": base64.b64encode(image.data).decode(), "revised_prompt": None})
    body: dict[str, Any] = {
        "created": int(time.time()),
        "data": data,
        "background": "opaque",
        "output_format": ctx.spec.output_format,
        "size": ctx.spec.size,
    }
    if ctx.usage:
        body["usage"] = _usage(totals)
    return body


def _event(ctx: ImagesContext, kind: str, image: Image | Partial, **extra: Any) -> bytes:
    event: dict[str, Any] = {
        "type": f"{ctx.event_prefix}.{kind}",
        "b64_json": base64.b64encode(image.data).decode(),
        "created_at": int(time.time()),
        "size": ctx.spec.size,
        "quality": "auto",
        "background": "opaque",
        "output_format": image.output_format,
        "image_index": image.index,
        **extra,
    }
    return data_frame(event, event=event["type"])


async def stream_images(
    outputs: AsyncIterator[Accepted | Output], ctx: ImagesContext
) -> AsyncIterator[bytes]:
    """SSE frames of partial and completed images, then ``[DONE]``."""
    usage = TokenUsage(0, 0)
    try:
        async for output in outputs:
            if isinstance(output, TokenUsage):
                usage = output
            elif isinstance(output, Partial):
                yield _event(ctx, "partial_image", output, partial_image_index=output.partial_index)
            elif isinstance(output, Image):
                yield _event(ctx, "completed", output, usage=_usage(usage))
            elif isinstance(output, Finished):
                _check_count(output, ctx.n)
    except TransportError as exc:
        logger.warning("image stream %s failed: %s %s", ctx.request_id, exc.code, exc.message)
        yield error_frame(exc)
        return
    except Exception as exc:
        logger.exception("image stream %s failed", ctx.request_id)
        yield error_frame(exc)
        return
    yield DONE
