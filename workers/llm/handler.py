"""The LLM worker's job handler: a ``ChatJob`` in, protocol events out (``workers.worker``).

Maps the wire job to an :class:`~workers.llm.types.LLMRequest` (blobs read, prompt built),
runs it on the shared :class:`~workers.llm.engine.SeedXLLMEngine`, and maps its events:
text deltas as they come, boxes in pixels of the first input image (clamped to it), each visual
embedding stored as a ``float16 [64, D]`` tensor blob (``EmbeddingReady``), then ``Usage`` and
``Done`` with every choice's finish reason. A cancelled or expired job (``ctx.stop_event``)
aborts its vLLM requests at once. Bad input answers ``Failed(code="invalid_request")`` naming
the parameter; the engine keeps serving other jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from workers import protocol as wire
from workers.errors import BlobCorrupt, BlobMissing
from workers.llm import types as llm
from workers.llm.prompting import BadRequest, decode_image, prepare_prompt
from workers.worker import JobContext

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request"


def _failed(message: str, param: str | None) -> wire.Failed:
    return wire.Failed(error=wire.ErrorPayload(code=INVALID_REQUEST, message=message, param=param))


def _box(box: Any) -> wire.Box:
    c = box.clamped
    return wire.Box(x1=c.x1, y1=c.y1, x2=c.x2, y2=c.y2, image_index=0)


class LLMJobHandler:
    """Callable handler for ``workers.worker.Worker`` around one engine."""

    def __init__(self, engine: Any, metrics: Any | None = None) -> None:
        self.engine = engine
        self.metrics = metrics

    async def _request(self, job: wire.ChatJob, ctx: JobContext) -> llm.LLMRequest:
        images = []
        for i, message in enumerate(job.messages):
            decoded = []
            for part in message.content:
                if isinstance(part, wire.ImagePart):
                    data = await ctx.blobs.get(part.image)
                    decoded.append(decode_image(data, f"messages[{i}].content"))
            images.append(decoded)
        engine = self.engine
        prompt = prepare_prompt(
            job, images, engine.model_name, engine.tokenizer, engine.image_rules
        )
        if prompt.image_required and not job.allow_image_output:
            raise BadRequest(f"task {job.task!r} needs allow_image_output", "allow_image_output")
        s = job.sampling
        sampling = llm.SamplingOptions(s.temperature, s.top_p, s.max_tokens, s.stop, s.seed, s.n)
        return llm.LLMRequest(
            job.job_id,
            prompt.ids,
            prompt.images,
            sampling,
            prompt.image_required,
            prompt.box_image_size,
        )

    async def __call__(self, job: wire.Job, ctx: JobContext) -> AsyncIterator[wire.Event]:
        if not isinstance(job, wire.ChatJob):
            yield _failed(f"the LLM worker does not run {job.kind!r} jobs", "kind")
            return
        try:
            request = await self._request(job, ctx)
            self.engine.check(request)
        except (BlobMissing, BlobCorrupt) as exc:
            yield _failed(f"cannot read an input image: {exc}", "messages")
            return
        except (BadRequest, ValueError) as exc:
            yield _failed(str(exc), getattr(exc, "param", None))
            return
        watcher = asyncio.create_task(self._abort_on_stop(job.job_id, ctx))
        try:
            async for event in self._run(job, request, ctx):
                yield event
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _abort_on_stop(self, request_id: str, ctx: JobContext) -> None:
        await ctx.stop_event.wait()
        logger.info("job stopped (%s): aborting its vLLM requests", ctx.stop_reason)
        await self.engine.abort(request_id)

    async def _run(
        self, job: wire.ChatJob, request: llm.LLMRequest, ctx: JobContext
    ) -> AsyncIterator[wire.Event]:
        reasons: dict[int, wire.FinishReason] = {}
        started = time.monotonic()
        first = True
        async for event in self.engine.generate(request):
            if first and self.metrics is not None:
                self.metrics.observe_first_event(time.monotonic() - started)
                first = False
            if isinstance(event, llm.TextDelta):
                yield wire.TextDelta(text=event.text, choice=event.choice)
            elif isinstance(event, llm.BoxesFound):
                yield wire.Boxes(boxes=tuple(_box(b) for b in event.boxes), choice=event.choice)
            elif isinstance(event, llm.ImageEmbedding):
                if not job.allow_image_output:
                    continue
                array = event.embedding.to("cpu").half().numpy()
                ref = await ctx.blobs.put_tensor(array, owner=job.job_id)
                yield wire.EmbeddingReady(
                    embedding=ref, image_index=event.index, choice=event.choice
                )
            elif isinstance(event, llm.ChoiceFinished):
                reasons[event.choice] = "length" if event.reason == "length" else "stop"
            elif isinstance(event, llm.Usage):
                yield wire.Usage(
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    images=event.images if job.allow_image_output else 0,
                )
        yield wire.Done(finish_reasons=tuple(reasons[c] for c in sorted(reasons)))
