"""HTTP of ``POST /v1/chat/completions``: only request/response plumbing lives here."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.chat.respond import AnswerContext, collect_completion, stream_chunks
from server.chat.schema import ChatCompletionRequest
from server.chat.service import run_chat
from server.deps import GatewayDep
from server.metrics import request_id_of
from server.openapi import ERROR_RESPONSES, base_url_of, client_gone
from server.sse import ClientDisconnected, EventStreamResponse, run_until_disconnect
from server.unicode import UnicodeCheckedRoute

router = APIRouter(tags=["chat"], route_class=UnicodeCheckedRoute)


@router.post(
    "/v1/chat/completions",
    responses={
        200: {
            "description": "A chat.completion object, or an SSE stream of chat.completion.chunk",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        **ERROR_RESPONSES,
    },
    response_model=None,
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, gateway: GatewayDep
) -> Response:
    """OpenAI chat completions with images in and out (see ``server.chat.render``)."""
    started = time.perf_counter()
    request_id = request_id_of(request.scope)
    outputs = run_chat(gateway, body, request_id)
    try:
        accepted = await run_until_disconnect(request, anext(outputs))
    except ClientDisconnected:
        return client_gone()
    options = body.image_options
    ctx = AnswerContext(
        completion_id=f"chatcmpl-{request_id}",
        created=int(time.time()),
        model=getattr(accepted, "model", body.model or ""),
        n=body.n,
        started=started,
        response_format=options.response_format if options else "b64_json",
        publisher=gateway.publisher,
        base_url=base_url_of(request, gateway.settings),
        logprobs=bool(body.logprobs),
    )
    headers = {"X-Request-ID": request_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStreamResponse(stream_chunks(outputs, ctx, include_usage), headers=headers)
    try:
        answer: dict[str, Any] = await run_until_disconnect(
            request, collect_completion(outputs, ctx)
        )
    except ClientDisconnected:
        return client_gone()
    return JSONResponse(answer, headers=headers)
