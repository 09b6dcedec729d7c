"""HTTP of ``/v1/responses``: create, retrieve and delete; only request/response plumbing."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from server.deps import GatewayDep
from server.errors import InvalidRequest, NotFound
from server.metrics import request_id_of
from server.openapi import ERROR_RESPONSES, client_gone
from server.responses.render import ResponseBuilder
from server.responses.respond import collect_response, stream_events
from server.responses.schema import ResponsesRequest
from server.responses.service import prepare, run_response
from server.responses.store import ResponseStore
from server.sse import ClientDisconnected, EventStreamResponse, run_until_disconnect
from server.unicode import UnicodeCheckedRoute

router = APIRouter(tags=["responses"], route_class=UnicodeCheckedRoute)


async def get_store(request: Request) -> ResponseStore:
    """The app's response store (set by ``create_app``)."""
    store: ResponseStore = request.app.state.responses
    return store


StoreDep = Annotated[ResponseStore, Depends(get_store)]


@router.post(
    "/v1/responses",
    responses={
        200: {
            "description": "A Response object, or an SSE stream of Responses events",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        **ERROR_RESPONSES,
    },
    response_model=None,
)
async def create_response(
    body: ResponsesRequest, request: Request, gateway: GatewayDep, store: StoreDep
) -> Response:
    """OpenAI's Responses API on the chat path: text, boxes and images out."""
    started = time.perf_counter()
    request_id = request_id_of(request.scope)
    prepared = await prepare(gateway, store, body)
    outputs = run_response(gateway, prepared, request_id)
    try:
        accepted = await run_until_disconnect(request, anext(outputs))
    except ClientDisconnected:
        return client_gone()
    builder = ResponseBuilder(
        response_id=prepared.response_id,
        model=getattr(accepted, "model", body.model or ""),
        request=body,
        images=prepared.translation.images,
    )
    headers = {"X-Request-ID": request_id}
    if body.stream:
        events = stream_events(outputs, builder, prepared, started)
        return EventStreamResponse(events, headers=headers)
    try:
        answer: dict[str, Any] = await run_until_disconnect(
            request, collect_response(outputs, builder, prepared, started)
        )
    except ClientDisconnected:
        return client_gone()
    return JSONResponse(answer, headers=headers)


@router.get("/v1/responses/{response_id}", responses=ERROR_RESPONSES, response_model=None)
async def retrieve_response(
    response_id: str, store: StoreDep, stream: Annotated[bool, Query()] = False
) -> JSONResponse:
    """A stored Response object (``store: true``, within ``response_store_ttl_s``)."""
    if stream:
        raise InvalidRequest("streaming a stored response is not supported", param="stream")
    record = await store.load(response_id)
    if record is None:
        raise NotFound(f"Response with id {response_id!r} not found.", param="response_id")
    return JSONResponse(record.response)


@router.delete("/v1/responses/{response_id}", responses=ERROR_RESPONSES, response_model=None)
async def delete_response(response_id: str, store: StoreDep) -> JSONResponse:
    """Forget a stored response (its id then fails as ``previous_response_id`` too)."""
    if not await store.delete(response_id):
        raise NotFound(f"Response with id {response_id!r} not found.", param="response_id")
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
