"""HTTP of the images API: generations, edits, variations, and URL-response content."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request, Response
from fastapi.responses import JSONResponse

from server.deps import GatewayDep
from server.images import service
from server.images.respond import ImagesContext, collect_images, stream_images
from server.images.schema import (
    ImageEditForm,
    ImageGenerateRequest,
    ImagesRequest,
    ImageVariationForm,
)
from server.metrics import request_id_of
from server.openapi import ERROR_RESPONSES, base_url_of, client_gone
from server.sse import ClientDisconnected, EventStreamResponse, run_until_disconnect
from server.state import Gateway
from server.unicode import UnicodeCheckedRoute

router = APIRouter(tags=["images"], route_class=UnicodeCheckedRoute)

_ANSWER = {
    200: {
        "description": "An ImagesResponse, or (stream=true) an SSE stream of image events",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    **ERROR_RESPONSES,
}
MULTIPART = "multipart/form-data"


async def _answer(
    request: Request,
    gateway: Gateway,
    body: ImagesRequest,
    event_prefix: str,
    *,
    usage: bool = True,
    stream: bool = False,
) -> Response:
    """The one answer path of the three endpoints: plan (400s before any I/O), queue the jobs,
    then stream or collect the images."""
    request_id = request_id_of(request.scope)
    plan = service.plan(gateway, body)
    outputs = service.run(gateway, plan, body, request_id)
    ctx = ImagesContext(
        request_id=request_id,
        n=body.n,
        spec=plan.spec,
        response_format=body.response_format,
        publisher=gateway.publisher,
        base_url=base_url_of(request, gateway.settings),
        event_prefix=event_prefix,
        usage=usage,
    )
    headers = {"X-Request-ID": request_id}
    try:
        await run_until_disconnect(request, anext(outputs))
        if stream:
            return EventStreamResponse(stream_images(outputs, ctx), headers=headers)
        answer: dict[str, Any] = await run_until_disconnect(request, collect_images(outputs, ctx))
    except ClientDisconnected:
        return client_gone()
    return JSONResponse(answer, headers=headers)


@router.post("/v1/images/generations", responses=_ANSWER, response_model=None)
async def create_image(
    body: ImageGenerateRequest, request: Request, gateway: GatewayDep
) -> Response:
    """Text to image: the LLM writes the visual embedding, the de-tokenizer renders it."""
    return await _answer(request, gateway, body, "image_generation", stream=body.stream)


@router.post("/v1/images/edits", responses=_ANSWER, response_model=None)
async def edit_image(
    form: Annotated[ImageEditForm, Form(media_type=MULTIPART)],
    request: Request,
    gateway: GatewayDep,
) -> Response:
    """Instruction editing with SEED-X-Edit (one source image; masks are refused)."""
    return await _answer(request, gateway, form, "image_edit", stream=form.stream)


@router.post("/v1/images/variations", responses=_ANSWER, response_model=None)
async def create_variation(
    form: Annotated[ImageVariationForm, Form(media_type=MULTIPART)],
    request: Request,
    gateway: GatewayDep,
) -> Response:
    """Variations: the image re-generated from its own ViT features (no LLM)."""
    return await _answer(request, gateway, form, "image_generation", usage=False)


@router.get(
    "/v1/images/{image_id}/content",
    responses={
        200: {"description": "The image bytes", "content": {"image/png": {}}},
        **ERROR_RESPONSES,
    },
    response_class=Response,
)
async def image_content(
    image_id: Annotated[str, Path(max_length=128)], gateway: GatewayDep
) -> Response:
    """The image of a ``response_format=url`` answer, until it expires; no API key needed: the
    signed id is the capability (``server.published``)."""
    image = await gateway.publisher.read(image_id)
    left_s = max(0, image.expires_at - int(time.time()))
    return Response(
        image.data,
        media_type=image.content_type,
        headers={"Cache-Control": f"private, max-age={left_s}, immutable"},
    )
