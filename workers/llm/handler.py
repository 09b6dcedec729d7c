"""The LLM worker's job handler: a ``ChatJob`` in, protocol events out (``workers.worker``).

Maps the wire job to an :class:`~workers.llm.types.LLMRequest` (blobs read, prompt built),
runs it on the shared :class:`~workers.llm.engine.SeedXLLMEngine`, and maps its events:
text deltas as they come, boxes in pixels of the first input image (clamped to it), each visual
embedding stored as a ``float16 [64, D]`` tensor blob (``EmbeddingReady``), then ``Usage`` and
``Done`` with every choice's finish reason. A cancelled or expired job (``ctx.stop_event``)
aborts its vLLM requests at once. Bad input answers ``Failed(code="invalid_request")``
(:class:`~workers.errors.InvalidRequest`, HTTP 400) naming the parameter, before any engine
work; the engine keeps serving other jobs. An engine error once vLLM's engine core is dead
(``engine.alive`` false: killed, out of memory) is raised as
:class:`~workers.handler.EngineDied`: the job is handed back for a restarted worker, not failed.
Metrics: ``workers.llm.metrics``.

Sampling: a job whose ``temperature`` is None asks for the model's default, which for SEED-X is
greedy decoding (spec §5.5: the original calls ``generate(do_sample=False)``), except with
``n > 1``: greedy choices would all be the same answer, so several choices sample at OpenAI's
default temperature 1, each with its own seed stream (``workers.llm.choice``). An explicit value
is honoured (0 is greedy too, and then ``n`` identical choices is what was asked for). See
``workers.protocol.SamplingParams``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from workers import protocol as wire
from workers.connection import CONNECTION_ERRORS
from workers.errors import BlobCorrupt, BlobMissing, InvalidMessage, InvalidRequest
from workers.llm import types as llm
from workers.llm.metrics import LLMMetrics
from workers.llm.prompting import BadRequest, decode_image, prepare_prompt
from workers.llm.text import TokenStrings, finite_logprob
from workers.worker import EngineDied, JobContext

logger = logging.getLogger(__name__)

GREEDY = 0.0
"""SEED-X's default temperature (§5.5: greedy), used when a job leaves ``temperature`` unset."""
SAMPLED_CHOICES = 1.0
"""The default temperature of a job asking for ``n > 1`` choices (OpenAI's default)."""


def sampling_options(params: wire.SamplingParams) -> llm.SamplingOptions:
    """Wire sampling -> engine options; an unset temperature is the model default (greedy), or
    sampling at 1 when several choices are asked for, so they can differ."""
    if params.temperature is not None:
        temperature = params.temperature
    else:
        temperature = SAMPLED_CHOICES if params.n > 1 else GREEDY
    structured = params.structured
    return llm.SamplingOptions(
        temperature,
        params.top_p,
        params.max_tokens,
        params.stop,
        params.seed,
        params.n,
        params.presence_penalty,
        params.frequency_penalty,
        params.logprobs,
        tuple(sorted((params.logit_bias or {}).items())),
        json_object=structured is not None and structured.type == "json_object",
        json_schema=structured.json_schema if structured is not None else None,
    )


def _failed(error: InvalidRequest | InvalidMessage) -> wire.Failed:
    return wire.Failed(error=wire.ErrorPayload.from_error(error))


def _wire_logprobs(
    entries: tuple[llm.TokenLogprob, ...], strings: TokenStrings
) -> tuple[wire.TokenLogprob, ...]:
    def top(token_id: int, logprob: float) -> wire.TopLogprob:
        token, raw = strings(token_id)
        return wire.TopLogprob(token=token, logprob=finite_logprob(logprob), bytes=raw)

    def entry(e: llm.TokenLogprob) -> wire.TokenLogprob:
        token, raw = strings(e.token_id)
        alternatives = tuple(top(i, lp) for i, lp in e.top)
        return wire.TokenLogprob(
            token=token, logprob=finite_logprob(e.logprob), bytes=raw, top_logprobs=alternatives
        )

    return tuple(entry(e) for e in entries)


def _box(box: Any) -> wire.Box:
    c = box.clamped
    return wire.Box(x1=c.x1, y1=c.y1, x2=c.x2, y2=c.y2, image_index=0)


class LLMJobHandler:
    """Callable handler for ``workers.worker.Worker`` around one engine."""

    def __init__(self, engine: Any, metrics: LLMMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics if metrics is not None else LLMMetrics(engine.model_name)
        self._token_strings: TokenStrings | None = None

    @property
    def token_strings(self) -> TokenStrings:
        if self._token_strings is None:
            self._token_strings = TokenStrings(self.engine.tokenizer)
        return self._token_strings

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
        if job.sampling.structured is not None and job.allow_image_output:
            raise BadRequest("a JSON answer cannot hold images", "response_format")
        sampling = sampling_options(job.sampling)
        sampling.validate()
        return llm.LLMRequest(
            job.job_id,
            prompt.ids,
            prompt.images,
            sampling,
            prompt.image_required,
            prompt.box_image_size,
        )

    async def __call__(self, job: wire.Job, ctx: JobContext) -> AsyncIterator[wire.Event]:
        if not isinstance(job, wire.ChatJob):  # a routing bug, not the client's fault
            yield _failed(InvalidMessage(f"the LLM worker does not run {job.kind!r} jobs"))
            return
        timing = self.metrics.timing()  # TTFT counts from here: blob reads and prompt included
        try:
            request = await self._request(job, ctx)
            self.engine.check(request)
        except (BlobMissing, BlobCorrupt) as exc:
            yield self._invalid(f"cannot read an input image: {exc}", "messages")
            return
        except (BadRequest, ValueError) as exc:
            yield self._invalid(str(exc), getattr(exc, "param", None))
            return
        watcher = asyncio.create_task(self._abort_on_stop(job.job_id, ctx))
        try:
            async for event in self._run(job, request, ctx, timing):
                yield event
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _invalid(self, message: str, param: str | None) -> wire.Failed:
        logger.warning("invalid request (%s): %s", param, message)
        self.metrics.invalid_request()
        return _failed(InvalidRequest(message, param=param))

    async def _abort_on_stop(self, request_id: str, ctx: JobContext) -> None:
        await ctx.stop_event.wait()
        logger.info("job stopped (%s): aborting its vLLM requests", ctx.stop_reason)
        try:
            await self.engine.abort(request_id)
        except Exception:
            if self.engine.alive:
                raise
            logger.info("the engine is dead: nothing to abort")

    async def _run(
        self,
        job: wire.ChatJob,
        request: llm.LLMRequest,
        ctx: JobContext,
        timing: llm.TokenObserver,
    ) -> AsyncIterator[wire.Event]:
        reasons: dict[int, wire.FinishReason] = {}
        try:
            async for event in self.engine.generate(request, timing):
                mapped = await self._map(job, event, ctx)
                if isinstance(event, llm.ChoiceFinished):
                    reasons[event.choice] = "length" if event.reason == "length" else "stop"
                if mapped is not None:
                    yield mapped
        except CONNECTION_ERRORS:
            raise  # Redis (blob writes), not the engine
        except Exception as exc:
            self.metrics.engine_error()
            if not self.engine.alive:
                raise EngineDied(f"vLLM's engine core died ({type(exc).__name__})") from exc
            raise
        yield wire.Done(finish_reasons=tuple(reasons[c] for c in sorted(reasons)))

    async def _map(self, job: wire.ChatJob, event: llm.Event, ctx: JobContext) -> wire.Event | None:
        """The wire event of one engine event (None: nothing to send)."""
        if isinstance(event, llm.TextDelta):
            logprobs = None
            if event.logprobs is not None:
                logprobs = _wire_logprobs(event.logprobs, self.token_strings)
            return wire.TextDelta(text=event.text, choice=event.choice, logprobs=logprobs)
        if isinstance(event, llm.BoxesFound):
            return wire.Boxes(boxes=tuple(_box(b) for b in event.boxes), choice=event.choice)
        if isinstance(event, llm.ImageEmbedding):
            if not job.allow_image_output:
                return None
            array = event.embedding.to("cpu").half().numpy()
            ref = await ctx.blobs.put_tensor(array, owner=job.job_id)
            self.metrics.image_emitted()
            return wire.EmbeddingReady(embedding=ref, image_index=event.index, choice=event.choice)
        if isinstance(event, llm.Usage):
            self.metrics.usage(event.prompt_tokens, event.completion_tokens)
            return wire.Usage(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                images=event.images if job.allow_image_output else 0,
                prompt_image_tokens=event.image_tokens or None,
            )
        return None
