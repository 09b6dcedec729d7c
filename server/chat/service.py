"""``/v1/chat/completions``: request -> ChatJob (+ image jobs) -> gateway outputs.

The order of checks is the contract of issue 6/9: cheap validation (400), the model (404) and
its downstream stages (503), admission (429, Retry-After) — all before any image is fetched or
decoded — then the images (400/413), then the job. :func:`run_chat` yields :class:`Accepted` as
soon as the LLM job is queued, so the router can still answer errors before that point with a
plain HTTP status, and start a stream only after it.

User text travels to the worker unchanged, special-token strings included: the LLM worker builds
prompts through ``engine.prompts.build_prompt``, whose only path for message text is
``SeedXTokenizer.encode_parts`` with the text as a plain ``str`` — SentencePiece pieces, never an
added-token id. Typing ``<img>`` or ``</s>`` therefore yields the *characters*, like any other
text (the "escape" option of issue 6, proven end to end by
``tests/unit/server/test_special_tokens.py``); rejecting would break legitimate prompts about
markup, and stripping would silently change what the user wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from functools import partial
from typing import Literal, TypeVar

from pydantic import ValidationError

from server.catalog import Endpoint
from server.chat.schema import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatImageOptions,
    ImageURLPart,
    ResponseFormat,
    SystemMessage,
    TextPart,
)
from server.dispatch import RequestScope, fresh_seed
from server.errors import InvalidRequest
from server.orchestrate import (
    DiffusionJob,
    ImageJobFactory,
    Output,
    diffusion_job,
    start_pipeline,
)
from server.rendering import IMAGE_BLOCK_TOKENS, ImageSpec
from server.state import Gateway
from workers import protocol as wire

logger = logging.getLogger(__name__)

T = TypeVar("T")
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Accepted:
    """The LLM job is queued: errors from here on arrive inside the answer."""

    model: str


@dataclass(frozen=True)
class _Plan:
    model: str
    sampling: wire.SamplingParams
    images: ImageSpec | None  # None: a text answer
    require_image: bool = False


@dataclass(frozen=True)
class _Renderer:
    """Where the answer's images are rendered (the model's route, ``server.catalog``)."""

    detokenizer: str
    conditioned: bool  # renders from the user's input image too (SEED-X-Edit)


def _structured(response_format: ResponseFormat | None) -> wire.StructuredOutput | None:
    """The worker's JSON constraint of ``response_format`` (None: free text)."""
    if response_format is None or response_format.type == "text":
        return None
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:  # OpenAI's schema is optional: any JSON object
        return wire.StructuredOutput(type="json_object")
    try:
        text = json.dumps(spec.schema_, separators=(",", ":"))
        return wire.StructuredOutput(type="json_schema", json_schema=text)
    except ValidationError:
        raise InvalidRequest(
            "response_format.json_schema.schema is too large", param="response_format"
        ) from None


def _plan(gateway: Gateway, req: ChatCompletionRequest, partial_images: int = 0) -> _Plan:
    """Validate everything that needs no I/O; 400 naming the parameter."""
    req.check_supported()
    bounds = gateway.settings.bounds
    if req.n > bounds.max_n:
        raise InvalidRequest(f"n must be at most {bounds.max_n}", param="n")
    max_tokens = req.max_completion_tokens or req.max_tokens or bounds.default_max_tokens
    if max_tokens > bounds.max_tokens:
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise InvalidRequest(f"{param} must be at most {bounds.max_tokens}", param=param)
    sampling = wire.SamplingParams(
        temperature=req.temperature,  # None: the model's default (SEED-X: greedy)
        top_p=1.0 if req.top_p is None else req.top_p,
        max_tokens=max_tokens,
        stop=req.stop_list,
        seed=fresh_seed() if req.seed is None else req.seed,
        n=req.n,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        logit_bias=req.logit_bias_ids(),
        structured=_structured(req.response_format),
    )
    model = req.model or gateway.settings.models.chat
    o = req.image_options or ChatImageOptions()
    if o.require and not req.wants_images:
        raise InvalidRequest(
            'image_options.require needs modalities ["text", "image"]: the answer may not '
            "hold images otherwise",
            param="image_options.require",
        )
    if o.require and max_tokens < IMAGE_BLOCK_TOKENS:
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise InvalidRequest(
            f"{param} must be at least {IMAGE_BLOCK_TOKENS} when an image is required "
            f"(an image takes {IMAGE_BLOCK_TOKENS} tokens)",
            param=param,
        )
    if not req.wants_images:
        return _Plan(model, sampling, None)
    spec = ImageSpec.build(
        bounds,
        size=o.size,
        steps=o.steps,
        guidance_scale=o.guidance_scale,
        seed=o.seed,
        output_format=o.output_format,
        output_compression=o.output_compression,
        partial_images=partial_images,
        param_prefix="image_options.",
    )
    return _Plan(model, sampling, spec, o.require)


def _image_count(req: ChatCompletionRequest) -> int:
    count = 0
    for message in req.messages:
        content = getattr(message, "content", None)
        if isinstance(content, list):
            count += sum(isinstance(part, ImageURLPart) for part in content)
        if isinstance(message, AssistantMessage) and message.images:
            count += len(message.images)
    return count


async def _gather(awaitables: list[Awaitable[T]]) -> list[T]:
    """All results, or the first error with the others cancelled."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def _image_part(
    gateway: Gateway, scope: RequestScope, url: str, param: str
) -> wire.ImagePart:
    checked = await gateway.loader.load_url(url, param)
    ref = await scope.put_blob(checked.data, checked.content_type)
    return wire.ImagePart(image=ref, width=checked.width, height=checked.height)


async def _messages(
    gateway: Gateway, scope: RequestScope, req: ChatCompletionRequest
) -> tuple[wire.ChatMessage, ...]:
    """The wire messages, with every image loaded, checked and stored as a blob."""
    slots: list[tuple[Role, list[str | Awaitable[wire.ImagePart]]]] = []
    for i, message in enumerate(req.messages):
        role: Role = "assistant" if isinstance(message, AssistantMessage) else "user"
        if isinstance(message, SystemMessage):
            role = "system"
        content = getattr(message, "content", None)
        items: list[str | Awaitable[wire.ImagePart]] = []
        if isinstance(content, str):
            items.append(content)
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, TextPart):
                items.append(part.text)
            else:
                param = f"messages[{i}].content[{j}].image_url"
                items.append(_image_part(gateway, scope, part.image_url.url, param))
        if isinstance(message, AssistantMessage):
            for j, image in enumerate(message.images or []):
                param = f"messages[{i}].images[{j}].image_url"
                items.append(_image_part(gateway, scope, image.image_url.url, param))
        slots.append((role, items))
    pending = [item for _, items in slots for item in items if not isinstance(item, str)]
    loaded = iter(await _gather(pending))
    messages = []
    for role, items in slots:
        parts: list[wire.TextPart | wire.ImagePart] = [
            wire.TextPart(text=item) if isinstance(item, str) else next(loaded) for item in items
        ]
        content = tuple(parts) or (wire.TextPart(text=""),)
        messages.append(wire.ChatMessage(role=role, content=content))
    return tuple(messages)


def _source_image(messages: tuple[wire.ChatMessage, ...]) -> wire.BlobRef | None:
    """The first image of the last user message (what SEED-X-Edit edits)."""
    last_user = [m for m in messages if m.role == "user"][-1:]
    for part in last_user[0].content if last_user else ():
        if isinstance(part, wire.ImagePart):
            return part.image
    return None


def _image_factory(
    scope: RequestScope,
    plan: _Plan,
    renderer: _Renderer | None,
    messages: tuple[wire.ChatMessage, ...],
) -> ImageJobFactory | None:
    spec = plan.images
    if spec is None or renderer is None:
        return None
    detokenizer, conditioned = renderer.detokenizer, renderer.conditioned
    source = _source_image(messages) if conditioned else None
    if conditioned and source is None:
        raise InvalidRequest(
            f"{plan.model!r} renders images from an input image: add one", param="messages"
        )
    ordinal = 0

    def make(event: wire.EmbeddingReady) -> list[tuple[int, DiffusionJob]]:
        nonlocal ordinal
        job = diffusion_job(
            scope, detokenizer, spec, ordinal, embedding=event.embedding, source=source
        )
        ordinal += 1
        return [(event.image_index, job)]

    return make


async def run_chat(
    gateway: Gateway, req: ChatCompletionRequest, request_id: str, *, partial_images: int = 0
) -> AsyncIterator[Accepted | Output]:
    """Validate, admit, load images, submit; then yield :class:`Accepted` and the outputs.

    ``partial_images``: previews per generated image (``Partial`` outputs); chat itself never
    asks for them, the Responses API's ``image_generation`` tool does (``server.responses``).
    """
    plan = _plan(gateway, req, partial_images)
    # The model decides next, as on every endpoint: 404, 400 naming the endpoints it serves,
    # "cannot answer with images", or 503 while it (or its de-tokenizer) has no live worker.
    route = await gateway.directory.resolve(
        plan.model, Endpoint.CHAT, images=plan.images is not None
    )
    renderer = None
    if route.detokenizer is not None:
        conditioned = route.detokenizer in gateway.settings.models.conditioned
        renderer = _Renderer(route.detokenizer, conditioned)
    if _image_count(req) > gateway.settings.media.max_images:
        limit = gateway.settings.media.max_images
        raise InvalidRequest(f"at most {limit} images per request", param="messages")
    admission = gateway.admission
    reservation = await admission.admit({queue: 1 for queue in route.queues})
    async with gateway.dispatcher.scope(
        request_id, gateway.settings.chat_timeout_s, partial(admission.release, reservation)
    ) as scope:
        messages = await _messages(gateway, scope, req)
        job = wire.ChatJob(
            **scope.envelope(),
            model=plan.model,
            messages=messages,
            sampling=plan.sampling,
            allow_image_output=plan.images is not None,
            require_image=plan.images is not None and plan.require_image,
        )
        factory = _image_factory(scope, plan, renderer, messages)
        outputs = await start_pipeline(scope, job, factory)
        yield Accepted(plan.model)
        async for output in outputs:
            yield output
