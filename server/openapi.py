"""Bits every router shares: the documented error responses, the image URL base, 499, and the
``Idempotency-Key`` header of the routes that create work."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

from server.settings import GatewaySettings


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorObject


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request (param names the field)"),
        (401, "Missing or invalid API key"),
        (404, "Model or resource not found"),
        (413, "Body or image too large"),
        (429, "Queue full; retry after Retry-After seconds"),
        (502, "A worker failed"),
        (503, "Job store or workers unavailable"),
        (504, "Deadline exceeded"),
    )
}


def document_idempotency(operation: dict[str, Any]) -> None:
    """Add the ``Idempotency-Key`` header and its 422 to an OpenAPI operation (the header is read
    by a middleware, ``server.idempotency``, so FastAPI does not see it in the signature)."""
    operation.setdefault("parameters", []).append(
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Retry with the same key and request to get the first answer without "
            "starting new jobs (joins it while it runs); per API key, kept idempotency_ttl_s "
            "after a successful answer. 1-255 visible ASCII characters.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        }
    )
    operation.setdefault("responses", {})["422"] = {
        "description": "The Idempotency-Key was used for a different request",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def base_url_of(request: Request, settings: GatewaySettings) -> str:
    """Where content URLs point: ``public_base_url``, else the request's own base URL."""
    if settings.public_base_url is not None:
        return str(settings.public_base_url)
    return str(request.base_url)


def client_gone() -> Response:
    """The response to a client that already left (nobody reads it; keeps metrics honest)."""
    return Response(status_code=499)
