"""Every error the gateway answers, as OpenAI's ``{"error": {message, type, param, code}}``.

One table (STYLE.md §4): the status, ``type`` and ``code`` of an error are class attributes of its
:class:`~workers.errors.TransportError` subclass — the transport's own (``Overloaded`` 429,
``Unavailable`` 503, ``DeadlineExceeded`` 504, ``WorkerFailed`` 502, ...) plus the gateway's
below. :func:`install_error_handlers` maps them, FastAPI's validation errors (400 with ``param``,
not 422: OpenAI clients expect 400), Starlette's HTTP errors (404/405) and anything unexpected
(500, generic message, traceback logged) onto that one body. Streams use :func:`error_frame`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from server.metrics import RejectReason, reject
from server.unicode import printable
from workers.errors import InvalidRequest as InvalidRequest  # re-exported: raised here too
from workers.errors import ModelNotFound as ModelNotFound
from workers.errors import (
    Overloaded,
    StoreFull,
    TransportError,
    Unavailable,
)
from workers.protocol import ErrorPayload

logger = logging.getLogger(__name__)


class InvalidImage(InvalidRequest):
    """An input image cannot be used: bad encoding, format, size, or it could not be fetched."""

    code = "invalid_image"


class AuthenticationFailed(TransportError):
    """No API key, or one that is not accepted."""

    code = "invalid_api_key"
    http_status = 401
    type = "authentication_error"


class PayloadTooLarge(TransportError):
    """The body (or one image in it) exceeds its configured limit."""

    code = "payload_too_large"
    http_status = 413
    type = "invalid_request_error"


class NotFound(TransportError):
    """A resource (an image URL that expired, an unknown route) does not exist."""

    code = "not_found"
    http_status = 404
    type = "invalid_request_error"


class PreviousResponseNotFound(InvalidRequest):
    """``previous_response_id`` names no stored response (unknown, expired or not stored):
    400, as OpenAI answers it, not 404: the request is what is wrong."""

    code = "previous_response_not_found"


class IdempotencyKeyReused(TransportError):
    """An ``Idempotency-Key`` already names a different request (another body, endpoint or
    method) of the same API key: 422, as draft-ietf-httpapi-idempotency-key-header says for a
    key reused with a different payload (the request is well formed, so not 400; and nothing is
    in conflict with the resource's state, so not 409)."""

    code = "idempotency_key_reused"
    http_status = 422
    type = "invalid_request_error"


def error_of_payload(payload: ErrorPayload) -> TransportError:
    """The exception for a worker's ``Failed`` payload (the wire table of ``workers.errors``:
    ``invalid_request`` answers 400 naming the parameter, unknown codes 502)."""
    return payload.to_error()


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object; text echoed from the request is made encodable (a lone surrogate
    in a message or parameter name would fail the response's own UTF-8 encoding: a 500)."""
    if param is not None:
        param = printable(param)
    return {"error": {"message": printable(message), "type": type_, "param": param, "code": code}}


def body_of(exc: TransportError) -> dict[str, Any]:
    """The error object of a classified error."""
    return error_body(exc.message, exc.type, exc.code, exc.param)


def headers_of(exc: TransportError, retry_after_s: int) -> dict[str, str]:
    """Extra headers: ``Retry-After`` on 429/503, ``WWW-Authenticate`` on 401."""
    if isinstance(exc, Overloaded) or exc.http_status == 503:
        return {"Retry-After": str(retry_after_s)}
    if isinstance(exc, AuthenticationFailed):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def error_response(exc: TransportError, retry_after_s: int = 1) -> JSONResponse:
    """The HTTP response of a classified error."""
    return JSONResponse(
        body_of(exc), status_code=exc.http_status, headers=headers_of(exc, retry_after_s)
    )


def error_frame(exc: BaseException) -> bytes:
    """The SSE frames that end a stream on error: one ``data:`` error body, then ``[DONE]``."""
    if isinstance(exc, TransportError):
        body = body_of(exc)
    else:
        body = error_body("internal error", "server_error", "internal_error")
    return b"data: " + json.dumps(body).encode() + b"\n\ndata: [DONE]\n\n"


def http_error_response(scope: Scope, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's HTTP errors (404, 405, and the body limit's 408/413) as OpenAI's body."""
    status = exc.status_code
    type_ = "invalid_request_error" if status < 500 else "server_error"
    code = {
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "payload_too_large",
    }.get(status)
    if status == 413:
        reject(scope, "too_large")
    elif status == 408:
        reject(scope, "body_timeout")
    body = error_body(str(exc.detail), type_, code)
    return JSONResponse(body, status_code=status, headers=exc.headers)


def validation_param(loc: Sequence[Any], body: Any = None) -> str | None:
    """``("body", "messages", 0, "user", "content", "str")`` -> ``"messages[0].content"``.

    pydantic puts union member names and discriminator tags in ``loc``; walking the request
    body along ``loc`` keeps only the steps that exist in the input, which is what the client
    can act on.
    """
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    text = ""
    node = body
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            text += f"[{part}]"
            node = node[part]
        elif isinstance(part, str) and (
            node is None or (isinstance(node, dict) and (last or part in node))
        ):
            text += f".{part}" if text else part
            node = node.get(part) if isinstance(node, dict) else None
    return text or None


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    """The first validation error, as a 400 naming its parameter."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("invalid request")
    first = errors[0]
    if tuple(first.get("loc", ())) == ("body",) and isinstance(exc.body, bytes | str):
        # The body arrived but not as JSON (curl -d without a Content-Type sends a form).
        return InvalidRequest(
            "the request body must be a JSON object sent with Content-Type: application/json"
        )
    body = exc.body if isinstance(exc.body, dict | list) else None
    param = validation_param(first.get("loc", ()), body)
    message = str(first.get("msg", "invalid value"))
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return InvalidRequest(message[:2000], param=param)


_REJECT_REASONS: dict[type[TransportError], RejectReason] = {
    Overloaded: "overloaded",
    Unavailable: "unavailable",
    StoreFull: "store_full",
    ModelNotFound: "model_not_found",
    PayloadTooLarge: "too_large",
}


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the mapping above on ``app``."""

    async def on_transport_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TransportError)
        reason = _REJECT_REASONS.get(type(exc))
        if reason is not None:
            reject(request.scope, reason)
        if exc.http_status >= 500:
            logger.warning("%s %s failed: %s %s", request.method, request.url.path, exc.code, exc)
        return error_response(exc, retry_after_s)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return http_error_response(request.scope, exc)

    async def on_wire_validation(request: Request, exc: Exception) -> JSONResponse:
        # A request the API schema let through but a wire message refused: the API schema
        # should have caught it (a gap to fix there), yet it is still the client's input.
        assert isinstance(exc, ValidationError)
        logger.warning("wire validation refused a request on %s: %s", request.url.path, exc)
        errors = exc.errors()
        message = f"invalid request: {errors[0]['msg'] if errors else 'invalid value'}"
        return error_response(InvalidRequest(message))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        body = error_body("internal error", "server_error", "internal_error")
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(TransportError, on_transport_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ValidationError, on_wire_validation)
    app.add_exception_handler(Exception, on_unexpected)
