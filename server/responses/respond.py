"""Answering a Responses request: one Response object, or its SSE event stream.

Both paths consume :func:`server.responses.service.run_response` *after* its ``Accepted`` and
feed a :class:`~server.responses.render.ResponseBuilder`. The response is stored (when
``store``) *before* the client sees it finish — before the JSON answer, before
``response.completed`` — so a follow-up sent the moment the client has the id always finds it.

A stream numbers every event (``sequence_number`` from 0) and sends each with its ``event:``
line, as OpenAI does; it has no ``[DONE]``. A job failing mid-way ends it with an ``error``
event (code, message, param) and then ``response.failed`` carrying the same error; the failed
response is stored too, so ``GET`` shows what happened. The non-streamed path raises instead,
and the error handlers answer with the status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from server.chat.service import Accepted
from server.metrics import TTFT
from server.orchestrate import Image, Output, Partial, Text
from server.responses.render import Event, ResponseBuilder
from server.responses.service import Prepared, remember
from server.sse import data_frame
from workers.errors import TransportError

logger = logging.getLogger(__name__)

ROUTE = "/v1/responses"


class _FirstOutput:
    """Observes time to the first text or image (the chat TTFT metric, this route's label)."""

    def __init__(self, started: float) -> None:
        self._started = started
        self._seen = False

    def see(self, output: Output | Accepted) -> None:
        if not self._seen and isinstance(output, Text | Image | Partial):
            self._seen = True
            TTFT.labels(ROUTE).observe(time.perf_counter() - self._started)


async def collect_response(
    outputs: AsyncIterator[Accepted | Output],
    builder: ResponseBuilder,
    prepared: Prepared,
    started: float,
) -> dict[str, Any]:
    """Consume every output; store and return the Response object."""
    first = _FirstOutput(started)
    async for output in outputs:
        first.see(output)
        if not isinstance(output, Accepted):
            builder.feed(output)
    response = builder.response()
    await remember(prepared, response)
    return response


class _Numbered:
    """Adds ``sequence_number`` and frames each event."""

    def __init__(self) -> None:
        self._next = 0

    def frame(self, event: Event) -> bytes:
        payload = {**event, "sequence_number": self._next}
        self._next += 1
        return data_frame(payload, event=event["type"])


def _error_of(exc: BaseException) -> tuple[dict[str, Any], str | None]:
    if isinstance(exc, TransportError):
        return {"code": exc.code, "message": exc.message}, exc.param
    return {"code": "server_error", "message": "internal error"}, None


async def stream_events(
    outputs: AsyncIterator[Accepted | Output],
    builder: ResponseBuilder,
    prepared: Prepared,
    started: float,
) -> AsyncIterator[bytes]:
    """SSE frames: created, in_progress, the items' events, then completed (or failed)."""
    numbered = _Numbered()
    first = _FirstOutput(started)
    for event in builder.start():
        yield numbered.frame(event)
    try:
        async for output in outputs:
            first.see(output)
            if not isinstance(output, Accepted):
                for event in builder.feed(output):
                    yield numbered.frame(event)
        final = builder.closing_event()
        await remember(prepared, final["response"])
    except Exception as exc:
        if isinstance(exc, TransportError):
            logger.warning("response %s failed: %s %s", builder.response_id, exc.code, exc.message)
        else:
            logger.exception("response %s failed", builder.response_id)
        for frame in await _failure(exc, builder, prepared, numbered):
            yield frame
        return
    finally:
        await _close(outputs)  # a client gone mid-stream: cancel the jobs now, not at GC
    yield numbered.frame(final)


async def _close(outputs: AsyncIterator[Any]) -> None:
    aclose = getattr(outputs, "aclose", None)
    if aclose is not None:
        await aclose()


async def _failure(
    exc: BaseException, builder: ResponseBuilder, prepared: Prepared, numbered: _Numbered
) -> list[bytes]:
    """The ``error`` and ``response.failed`` frames; the failed response is stored if it can be."""
    error, param = _error_of(exc)
    builder.fail(error)
    final = builder.closing_event()
    try:
        await remember(prepared, final["response"])
    except Exception:
        logger.exception("could not store failed response %s", builder.response_id)
    return [
        numbered.frame({"type": "error", **error, "param": param}),
        numbered.frame(final),
    ]
