"""The request body limits, enforced while the body streams in.

A declared ``Content-Length`` over the limit is refused with 413 before a byte of the body is
read. A body without one (chunked) or that lies about it is counted as it arrives, and reading
stops with 413 at the first chunk past the limit, so a client cannot make the gateway buffer
more than ``max_body_bytes`` (plus one chunk) whatever it claims.

A body that stops arriving (a client that sent fewer bytes than its ``Content-Length``, or a
slow-loris trickle with pauses) is answered 408 once no byte came for ``body_timeout_s``, so it
cannot hold a connection and a request slot forever. Only reads of the body are timed: after
the last chunk, ``receive`` waits for the client's disconnect for as long as the answer takes.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import InvalidRequest, PayloadTooLarge, error_response
from server.metrics import reject

logger = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    """Raised inside ``receive`` once the body passes the limit.

    An ``HTTPException`` because FastAPI re-raises those from body parsing unchanged (any other
    exception there becomes a generic 400); the error handlers answer it as OpenAI's 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised inside ``receive`` when the body stalls (answered as OpenAI-style 408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"no request body bytes arrived for {timeout_s:g}s; send it whole")


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``; see the module docstring."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared < 0:
            await error_response(InvalidRequest("invalid Content-Length header"))(
                scope, receive, send
            )
            return
        if declared is not None and declared > self.max_bytes:
            error = PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {self.max_bytes} bytes"
            )
            reject(scope, "too_large")
            await error_response(error)(scope, receive, send)
            return
        seen = 0
        limit, timeout_s = self.max_bytes, self.timeout_s
        body_done = False

        async def counting_receive() -> Message:
            nonlocal seen, body_done
            if body_done:
                return await receive()  # the disconnect watch: no time limit
            try:
                message = await asyncio.wait_for(receive(), timeout_s)
            except asyncio.TimeoutError:
                logger.warning("body of %s stalled for %gs; refused", scope["path"], timeout_s)
                raise BodyTimeout(timeout_s) from None
            if message["type"] != "http.request":
                body_done = True
                return message
            body_done = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > limit:
                logger.warning("body of %s passed %d bytes; refused", scope["path"], limit)
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)
