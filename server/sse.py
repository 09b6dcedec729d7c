"""Streaming responses and client-disconnect handling.

:class:`EventStreamResponse` sends an async iterator of SSE frames and, at the same time, listens
for the client going away; whichever ends first, the other is stopped and the iterator is closed,
so its ``finally`` blocks — the request scope that cancels the request's jobs in the workers —
run at once, not at the next frame or whenever the generator is garbage-collected. This does not
depend on the server's ASGI spec version (Starlette's ``StreamingResponse`` only listens on
< 2.4). :func:`run_until_disconnect` gives non-streamed requests the same guarantee.

The iterator is expected to turn its own errors into frames (:func:`server.errors.error_frame`);
an exception escaping it is logged and the stream is ended with a generic error frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.errors import error_frame

logger = logging.getLogger(__name__)

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def data_frame(payload: Mapping[str, Any], event: str | None = None) -> bytes:
    """One SSE frame carrying ``payload`` as JSON (with an ``event:`` line when given)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + body + b"\n\n"


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was complete."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (the request body has already been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise :class:`ClientDisconnected` if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _stop(task, watcher)
        raise
    if not task.done():
        await _stop(task)
        raise ClientDisconnected("the client disconnected")
    await _stop(watcher)
    return task.result()


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` of the frames of ``frames``; see the module docstring."""

    def __init__(self, frames: AsyncIterator[bytes], headers: Mapping[str, str] | None = None):
        super().__init__(
            frames, headers={**SSE_HEADERS, **(headers or {})}, media_type="text/event-stream"
        )
        self.frames = frames

    async def _send_all(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for frame in self.frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        except OSError:
            return  # the connection is gone; the disconnect watcher ends the exchange
        except Exception:
            logger.exception("stream failed")
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": error_frame(RuntimeError())})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sender.done():
                logger.info("client disconnected from %s mid-stream", scope.get("path"))
            await _stop(sender, watcher)
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
