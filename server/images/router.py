"""HTTP of the images API: generations, edits, variations, and URL-response content."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request, Response
from fastapi.responses import JSONResponse

from server.chat.service import Accepted
from server.deps import GatewayDep
from server.images import service
from server.images.respond import ImagesContext, collect_images, stream_images
from server.images.schema import ImageEditForm, ImageGenerateRequest, ImageVariationForm
from server.metrics import request_id_of
from server.openapi import ERROR_RESPONSES, base_url_of, client_gone
from server.orchestrate import Output
from server.rendering import ImageSpec
from server.sse import ClientDisconnected, EventStreamResponse, run_until_disconnect
from server.state import Gateway

router = APIRouter(tags=["images"])

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
    outputs: AsyncIterator[Accepted | Output],
    ctx: ImagesContext,
    stream: bool,
) -> Response:
    """Wait for the jobs to be accepted, then stream or collect the answer."""
    headers = {"X-Request-ID": ctx.request_id}
    try:
        await run_until_disconnect(request, anext(outputs))
        if stream:
            return EventStreamResponse(stream_images(outputs, ctx), headers=headers)
        body: dict[str, Any] = await run_until_disconnect(request, collect_images(outputs, ctx))
    except ClientDisconnected:
        return client_gone()
    return JSONResponse(body, headers=headers)


def _context(
    request: Request, gateway: Gateway, request_id: str, form: Any, prefix: str, usage: bool
) -> ImagesContext:
    spec = ImageSpec.build(
        gateway.settings.bounds,
        size=form.size,
        steps=form.steps,
        guidance_scale=form.guidance_scale,
        seed=form.seed,
        output_format=form.output_format,
        output_compression=form.output_compression,
    )
    return ImagesContext(
        request_id=request_id,
        n=form.n,
        spec=spec,
        response_format=form.response_format,
        publisher=gateway.publisher,
        base_url=base_url_of(request, gateway.settings),
        event_prefix=prefix,
        usage=usage,
    )


@router.post("/v1/images/generations", responses=_ANSWER, response_model=None)
async def create_image(
    body: ImageGenerateRequest, request: Request, gateway: GatewayDep
) -> Response:
    """Text to image: the LLM writes the visual embedding, the de-tokenizer renders it."""
    request_id = request_id_of(request.scope)
    outputs = service.generate(gateway, body, request_id)
    ctx = _context(request, gateway, request_id, body, "image_generation", usage=True)
    return await _answer(request, gateway, outputs, ctx, body.stream)


@router.post("/v1/images/edits", responses=_ANSWER, response_model=None)
async def edit_image(
    form: Annotated[ImageEditForm, Form(media_type=MULTIPART)],
    request: Request,
    gateway: GatewayDep,
) -> Response:
    """Instruction editing with SEED-X-Edit (one source image; masks are refused)."""
    request_id = request_id_of(request.scope)
    outputs = service.edit(gateway, form, request_id)
    ctx = _context(request, gateway, request_id, form, "image_edit", usage=True)
    return await _answer(request, gateway, outputs, ctx, form.stream)


@router.post("/v1/images/variations", responses=_ANSWER, response_model=None)
async def create_variation(
    form: Annotated[ImageVariationForm, Form(media_type=MULTIPART)],
    request: Request,
    gateway: GatewayDep,
) -> Response:
    """Variations: the image re-generated from its own ViT features (no LLM)."""
    request_id = request_id_of(request.scope)
    outputs = service.vary(gateway, form, request_id)
    ctx = _context(request, gateway, request_id, form, "image_generation", usage=False)
    return await _answer(request, gateway, outputs, ctx, stream=False)


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
    """The image of a ``response_format=url`` answer, until it expires."""
    image = await gateway.publisher.read(image_id)
    return Response(
        image.data,
        media_type=image.content_type,
        headers={"Cache-Control": "private, max-age=3600"},
    )
