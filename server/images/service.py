"""The images API's orchestration: generations, edits, variations.

* **generations**: one LLM job (``task="generate"``: the text-to-image template, an image
  required, greedy as in the SEED-X scripts) on the requested LLM; its visual embedding is
  decoded by ``n`` ``ImageGenerateJob`` on the model's de-tokenizer, seeds ``seed``..``seed+n-1``.
  Greedy decoding makes the embedding the same for every image, so the gateway asks the LLM
  once and fans out only the diffusion half (``n > 1`` costs one LLM pass, not ``n``).
* **edits**: the same on SEED-X-Edit (``task="edit"``, the source image in the message), then
  ``n`` ``ImageEditJob`` with the embedding and the source blob (three-branch guidance).
* **variations**: ``n`` ``ImageReconstructJob`` on the first-stage de-tokenizer; no LLM.

The three are one path (:func:`plan`, then :func:`run`), so a fix cannot land in one and miss
the others (``n=2`` once worked on variations alone). Checks run in the order of
``server.chat.service`` (400, 404/503, 429, then images); :func:`run` yields :class:`Accepted`
once the jobs are queued.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

from fastapi import UploadFile

from server.admission import StageModel
from server.chat.service import Accepted
from server.dispatch import RequestScope
from server.errors import InvalidRequest, PayloadTooLarge
from server.images.schema import ImageEditForm, ImagesRequest, ImageVariationForm, _Streaming
from server.orchestrate import DiffusionJob, Output, diffusion_job, start_images, start_pipeline
from server.rendering import ImageSpec, steps_for
from server.settings import Bounds
from server.state import Gateway
from workers import protocol as wire

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagesPlan:
    """A validated images request, before any I/O: what runs, and the spec the answer shows."""

    spec: ImageSpec
    detokenizer: str
    llm: str | None = None  # None: variations (the de-tokenizer alone, no prompt)
    task: Literal["generate", "edit"] = "generate"
    prompt: str = ""
    image_guidance_scale: float | None = None


def _quality_steps(quality: str | None, bounds: Bounds) -> int | None:
    """``quality`` as denoising steps (``steps``, SEED-X's own field, wins when both are set)."""
    return None if quality is None else steps_for(quality, bounds)


def _spec(gateway: Gateway, req: ImagesRequest) -> ImageSpec:
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
        partial_images=req.partial_images if isinstance(req, _Streaming) and req.stream else 0,
    )


def plan(gateway: Gateway, req: ImagesRequest) -> ImagesPlan:
    """Every check that needs no I/O, for the three endpoints alike; 400 naming the parameter.

    The endpoint is the request's type: generations (JSON), edits or variations (multipart).
    """
    spec = _spec(gateway, req)
    routing = gateway.settings.models
    if isinstance(req, ImageVariationForm):
        return ImagesPlan(spec, req.model or routing.variations)
    if isinstance(req, ImageEditForm):
        model = req.model or routing.edits
        detokenizer = gateway.directory.detokenizer_for(model, conditioned=True)
        return ImagesPlan(spec, detokenizer, model, "edit", req.prompt, req.image_guidance_scale)
    model = req.model or routing.generations
    detokenizer = gateway.directory.detokenizer_for(model, conditioned=False)
    return ImagesPlan(spec, detokenizer, model, "generate", req.prompt)


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
    content: tuple[wire.ImagePart | wire.TextPart, ...],
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


async def run(
    gateway: Gateway, plan: ImagesPlan, req: ImagesRequest, request_id: str
) -> AsyncIterator[Accepted | Output]:
    """Admit, store the source image, queue the jobs; yield :class:`Accepted`, then outputs.

    One path for the three endpoints: the ``n`` images are the ``n`` diffusion jobs of
    :func:`server.orchestrate.diffusion_job`, rendering the LLM's embedding (generations,
    edits) or the source image alone (variations).
    """
    demand = {StageModel("diffusion", plan.detokenizer): req.n}
    if plan.llm is not None:
        demand = {StageModel("llm", plan.llm): 1, **demand}
    async with await _admit(gateway, demand, request_id) as scope:
        upload = req.source()
        source = None if upload is None else await _upload(gateway, scope, upload)
        source_ref = None if source is None else source.image

        def render(k: int, embedding: wire.BlobRef | None) -> DiffusionJob:
            return diffusion_job(
                scope,
                plan.detokenizer,
                plan.spec,
                k,
                embedding=embedding,
                source=source_ref,
                image_guidance_scale=plan.image_guidance_scale,
            )

        if plan.llm is None:
            outputs = await start_images(scope, [render(k, None) for k in range(req.n)])
        else:
            prompt = wire.TextPart(text=plan.prompt)
            content = (prompt,) if source is None else (source, prompt)
            job = _llm_job(gateway, scope, plan.llm, plan.task, content)

            def images(event: wire.EmbeddingReady) -> list[tuple[int, DiffusionJob]]:
                if event.image_index or event.choice:
                    return []  # the template asks for one image: render the first, n times
                return [(k, render(k, event.embedding)) for k in range(req.n)]

            outputs = await start_pipeline(scope, job, images)
        yield Accepted(plan.llm or plan.detokenizer)
        async for output in outputs:
            yield output
