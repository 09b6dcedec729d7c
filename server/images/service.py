"""The images API's orchestration: generations, edits, variations.

* **generations**: one LLM job (``task="generate"``: the text-to-image template, an image
  required, greedy as in the SEED-X scripts) on the requested LLM; its visual embedding is
  decoded by ``n`` ``ImageGenerateJob`` on the model's de-tokenizer, seeds ``seed``..``seed+n-1``.
  Greedy decoding makes the embedding the same for every image, so the gateway asks the LLM
  once and fans out only the diffusion half (``n > 1`` costs one LLM pass, not ``n``).
* **edits**: the same on SEED-X-Edit (``task="edit"``, the source image in the message), then
  ``n`` ``ImageEditJob`` with the embedding and the source blob (three-branch guidance).
* **variations**: ``n`` ``ImageReconstructJob`` on the first-stage de-tokenizer; no LLM.

Checks run in the order of ``server.chat.service`` (400, 404/503, 429, then images). Each flow
yields :class:`Accepted` once its jobs are queued.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from fastapi import UploadFile

from server.admission import StageModel
from server.chat.service import Accepted
from server.dispatch import RequestScope
from server.errors import InvalidRequest, PayloadTooLarge
from server.images.schema import (
    ImageEditForm,
    ImageGenerateRequest,
    ImageVariationForm,
    _ImageOptions,
)
from server.orchestrate import DiffusionJob, Output, start_images, start_pipeline
from server.rendering import ImageSpec, steps_for
from server.settings import Bounds
from server.state import Gateway
from workers import protocol as wire

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePlan:
    spec: ImageSpec
    llm: str | None
    detokenizer: str


def _quality_steps(quality: str | None, bounds: Bounds) -> int | None:
    """``quality`` as denoising steps (``steps``, SEED-X's own field, wins when both are set)."""
    return None if quality is None else steps_for(quality, bounds)


def _spec(gateway: Gateway, req: _ImageOptions, partial_images: int = 0) -> ImageSpec:
    req.check_supported()
    bounds = gateway.settings.bounds
    if req.n > bounds.max_n:
        raise InvalidRequest(f"n must be at most {bounds.max_n}", param="n")
    return ImageSpec.build(
        bounds,
        size=req.size,
        steps=req.steps if req.steps is not None else _quality_steps(req.quality, bounds),
        guidance_scale=req.guidance_scale,
        seed=req.seed,
        output_format=req.output_format,
        output_compression=req.output_compression,
        partial_images=partial_images,
    )


def _detokenizer(gateway: Gateway, model: str, *, conditioned: bool) -> str:
    routing = gateway.settings.models
    detokenizer = routing.detokenizers.get(model)
    if detokenizer is None or (detokenizer in routing.conditioned) != conditioned:
        use = "edits" if not conditioned else "generations"
        raise InvalidRequest(
            f"model {model!r} does not serve this endpoint (try /v1/images/{use})", param="model"
        )
    return detokenizer


async def _admit(
    gateway: Gateway, demand: Mapping[StageModel, int], request_id: str
) -> RequestScope:
    """Check the models, admit the demand, and open the request's scope (which hands the
    admission back if the request ends before queueing a job)."""
    queues = list(demand)
    await gateway.directory.require(queues[0], queues[1:])
    reservation = await gateway.admission.admit(demand)
    release = partial(gateway.admission.release, reservation)
    return gateway.dispatcher.scope(request_id, gateway.settings.image_timeout_s, release)


async def _upload(gateway: Gateway, scope: RequestScope, upload: UploadFile) -> wire.ImagePart:
    """Read an uploaded file within the byte limit, check it, store it as a blob."""
    limit = gateway.settings.media.max_image_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"image exceeds the limit of {limit} bytes", param="image")
    checked = await gateway.loader.load_bytes(data, "image")
    ref = await scope.put_blob(checked.data, checked.content_type)
    return wire.ImagePart(image=ref, width=checked.width, height=checked.height)


def _llm_job(
    gateway: Gateway,
    scope: RequestScope,
    model: str,
    task: Literal["generate", "edit"],
    content: tuple[Any, ...],
) -> wire.ChatJob:
    return wire.ChatJob(
        **scope.envelope(),
        model=model,
        task=task,
        messages=(wire.ChatMessage(role="user", content=content),),
        sampling=wire.SamplingParams(
            temperature=0.0, max_tokens=gateway.settings.bounds.image_max_tokens, seed=0
        ),
        allow_image_output=True,
    )


async def generate(
    gateway: Gateway, req: ImageGenerateRequest, request_id: str
) -> AsyncIterator[Accepted | Output]:
    """``POST /v1/images/generations``."""
    spec = _spec(gateway, req, req.partial_images if req.stream else 0)
    model = req.model or gateway.settings.models.generations
    detokenizer = _detokenizer(gateway, model, conditioned=False)
    demand = {StageModel("llm", model): 1, StageModel("diffusion", detokenizer): req.n}
    async with await _admit(gateway, demand, request_id) as scope:
        job = _llm_job(gateway, scope, model, "generate", (wire.TextPart(text=req.prompt),))

        def images(event: wire.EmbeddingReady) -> list[tuple[int, DiffusionJob]]:
            if event.image_index or event.choice:
                return []
            fields = {**scope.envelope(), "model": detokenizer, "embedding": event.embedding}
            return [
                (k, wire.ImageGenerateJob(**fields, **spec.job_fields(k))) for k in range(req.n)
            ]

        outputs = await start_pipeline(scope, job, images)
        yield Accepted(model)
        async for output in outputs:
            yield output


async def edit(
    gateway: Gateway, form: ImageEditForm, request_id: str
) -> AsyncIterator[Accepted | Output]:
    """``POST /v1/images/edits``."""
    spec = _spec(gateway, form, form.partial_images if form.stream else 0)
    model = form.model or gateway.settings.models.edits
    detokenizer = _detokenizer(gateway, model, conditioned=True)
    demand = {StageModel("llm", model): 1, StageModel("diffusion", detokenizer): form.n}
    async with await _admit(gateway, demand, request_id) as scope:
        source = await _upload(gateway, scope, form.images()[0])
        content = (source, wire.TextPart(text=form.prompt))
        job = _llm_job(gateway, scope, model, "edit", content)
        extra = {}
        if form.image_guidance_scale is not None:
            extra["image_guidance_scale"] = form.image_guidance_scale

        def images(event: wire.EmbeddingReady) -> list[tuple[int, DiffusionJob]]:
            if event.image_index or event.choice:
                return []
            fields = {**scope.envelope(), "model": detokenizer, **extra}
            return [
                (
                    k,
                    wire.ImageEditJob(
                        embedding=event.embedding,
                        source=source.image,
                        **fields,
                        **spec.job_fields(k),
                    ),
                )
                for k in range(form.n)
            ]

        outputs = await start_pipeline(scope, job, images)
        yield Accepted(model)
        async for output in outputs:
            yield output


async def vary(
    gateway: Gateway, form: ImageVariationForm, request_id: str
) -> AsyncIterator[Accepted | Output]:
    """``POST /v1/images/variations``."""
    spec = _spec(gateway, form)
    model = form.model or gateway.settings.models.variations
    async with await _admit(gateway, {StageModel("diffusion", model): form.n}, request_id) as scope:
        source = await _upload(gateway, scope, form.image)
        jobs = [
            wire.ImageReconstructJob(
                **scope.envelope(), model=model, source=source.image, **spec.job_fields(k)
            )
            for k in range(form.n)
        ]
        outputs = await start_images(scope, jobs)
        yield Accepted(model)
        async for output in outputs:
            yield output
