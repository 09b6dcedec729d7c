"""The diffusion worker's job handler: a wire diffusion job in, protocol events out.

``DiffusionJobHandler(job, ctx)`` checks the job and reads its blobs (``workers.diffusion.
requests``), submits it to the shared :class:`~workers.diffusion.dispatcher.BatchDispatcher`,
and turns the ticket's outputs into events: ``PartialImage`` per preview (in order),
``ImageReady`` and ``Usage`` at the end. Output images are encoded on a small thread pool (PNG at
1024² costs tens of milliseconds of CPU that the device thread should not wait for) and stored
as blobs owned by the request, so the gateway frees them with ``BlobStore.release(request_id)``.

A stopped job (cancelled, expired, reclaimed: ``ctx.stop_event``) returns at once; the worker
loop sends its terminal event, and the ``finally`` withdraws it from the dispatcher so the device
stops working on it at the next step. A bad job yields ``Failed`` naming the parameter; the
worker keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Final

from PIL import Image

from engine.image_output import encode_image
from workers.blobs import BlobStore
from workers.diffusion import metrics
from workers.diffusion.dispatcher import BatchDispatcher
from workers.diffusion.errors import BadRequest, DiffusionError
from workers.diffusion.requests import DiffusionRequest, RequestLimits, build_request
from workers.diffusion.runner import Failure, Finished, Preview
from workers.errors import TransportError
from workers.handler import JobContext
from workers.protocol import (
    BlobRef,
    ErrorPayload,
    Event,
    Failed,
    ImageEditJob,
    ImageGenerateJob,
    ImageReady,
    ImageReconstructJob,
    Job,
    PartialImage,
    Usage,
)

logger = logging.getLogger(__name__)

CONTENT_TYPES: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _failed(error: DiffusionError | TransportError) -> Failed:
    metrics.FAILURES.labels(metrics.failure_reason(error.code)).inc()
    if error.code == "invalid_request":
        logger.warning("job refused: %s", error.message)
    return Failed(
        error=ErrorPayload(
            code=error.code,
            message=error.message[:4096],
            param=error.param,
            retryable=error.retryable,
        )
    )


class DiffusionJobHandler:
    """Callable handler for ``workers.worker.Worker`` around one dispatcher."""

    def __init__(
        self, dispatcher: BatchDispatcher, limits: RequestLimits, encoder: Executor | None = None
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.encoder = encoder

    async def __call__(self, job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        if not isinstance(job, (ImageGenerateJob, ImageEditJob, ImageReconstructJob)):
            refusal = BadRequest(f"the diffusion worker does not run {job.kind!r} jobs", "kind")
            yield _failed(refusal)
            return
        try:
            request = await build_request(job, ctx.blobs, self.limits)
        except (DiffusionError, TransportError) as exc:
            yield _failed(exc)
            return
        ticket = self.dispatcher.submit(request)
        try:
            while (output := await ticket.next_output(ctx.stop_event)) is not None:
                if isinstance(output, Failure):
                    yield _failed(output.error)
                    return
                for event in await self._events(request, output, ctx):
                    yield event
                if isinstance(output, Finished):
                    metrics.JOB_SECONDS.observe(time.monotonic() - ticket.submitted)
                    return
        finally:
            self.dispatcher.withdraw(ticket)

    async def _store(
        self, request: DiffusionRequest, image: Image.Image, blobs: BlobStore, owner: str
    ) -> BlobRef:
        """Encodes ``image`` in the job's format off the event loop and stores it as a blob."""
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(
            self.encoder, encode_image, image, request.output_format, request.quality
        )
        content_type = CONTENT_TYPES[request.output_format]
        return await blobs.put(data, content_type=content_type, owner=owner)

    async def _events(
        self, request: DiffusionRequest, output: Preview | Finished, ctx: JobContext
    ) -> list[Event]:
        owner = ctx.job.request_id
        ref = await self._store(request, output.image, ctx.blobs, owner)
        if isinstance(output, Preview):
            return [PartialImage(image=ref, partial_index=output.index)]
        ready = ImageReady(
            image=ref,
            width=output.image.width,
            height=output.image.height,
            output_format=request.output_format,
            seed=request.seed,
        )
        return [ready, Usage(images=1)]
