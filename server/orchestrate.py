"""The gateway's orchestration: an LLM job, and one diffusion job per image it emits, merged
into a single ordered-by-arrival stream of results ("the gateway orchestrates",
docs/architecture.md).

:func:`start_pipeline` submits the LLM job; every ``EmbeddingReady`` starts a diffusion job built
by the caller's :data:`ImageJobFactory` while the LLM keeps streaming, so text is never held
back behind an image. Callers see :class:`Output` values: text and boxes as the LLM produces
them, each image (and its partial previews) as its diffusion job delivers it, then one
:class:`Finished` with usage and finish reasons once every job is done. Variations have no LLM
half: :func:`start_images` runs diffusion jobs only.

Failure of any job ends the whole stream with that job's error; leaving the iteration early
(client gone) or failing cancels the producers, and the :class:`RequestScope` cancels their
jobs in the workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from server.dispatch import RequestScope, fresh_seed
from server.rendering import ImageSpec
from workers.protocol import (
    BlobRef,
    Box,
    Boxes,
    ChatJob,
    Done,
    EmbeddingReady,
    FinishReason,
    ImageEditJob,
    ImageGenerateJob,
    ImageReady,
    ImageReconstructJob,
    PartialImage,
    Reply,
    TextDelta,
    TokenLogprob,
    Usage,
)

DiffusionJob = ImageGenerateJob | ImageEditJob | ImageReconstructJob
ImageJobFactory = Callable[[EmbeddingReady], list[tuple[int, DiffusionJob]]]
"""The diffusion jobs for one visual embedding, each with the image index it produces."""


def diffusion_job(
    scope: RequestScope,
    detokenizer: str,
    spec: ImageSpec,
    ordinal: int,
    *,
    embedding: BlobRef | None = None,
    source: BlobRef | None = None,
    image_guidance_scale: float | None = None,
) -> DiffusionJob:
    """The diffusion job of the ``ordinal``-th image of a request: the one way every endpoint
    (chat, generations, edits, variations, the Responses image tool) builds one.

    Each job gets its own envelope here, so its own ``job_id``: a reply stream subscription is
    per job, and ``n`` images sharing one id were the ``n=2`` 500 of issue 21. The job type
    follows from what it renders: an embedding alone (generate), an embedding and a source
    image (edit, three-branch guidance), a source image alone (variation, reconstruction). A job
    the client gave no seed gets one here, as chat jobs do (``server.dispatch.fresh_seed``).
    """
    fields: dict[str, Any] = {**scope.envelope(), "model": detokenizer, **spec.job_fields(ordinal)}
    if fields["seed"] is None:  # a reclaimed job then renders the same picture its previews showed
        fields["seed"] = fresh_seed()
    if embedding is None:
        if source is None:
            raise ValueError("a diffusion job renders an embedding, a source image, or both")
        return ImageReconstructJob(source=source, **fields)
    if source is None:
        return ImageGenerateJob(embedding=embedding, **fields)
    if image_guidance_scale is not None:
        fields["image_guidance_scale"] = image_guidance_scale
    return ImageEditJob(embedding=embedding, source=source, **fields)


@dataclass(frozen=True)
class Text:
    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None  # when the request asked for them


@dataclass(frozen=True)
class BoxesFound:
    choice: int
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class Image:
    """A finished image; ``index`` counts the images of ``choice`` in order of the LLM's output."""

    choice: int
    index: int
    data: bytes
    output_format: str
    width: int
    height: int
    seed: int | None


@dataclass(frozen=True)
class Partial:
    choice: int
    index: int
    partial_index: int
    data: bytes
    output_format: str


@dataclass(frozen=True)
class TokenUsage:
    """The LLM job's token counts, as soon as it reports them (before its images finish)."""

    prompt_tokens: int
    completion_tokens: int
    image_tokens: int = 0  # of prompt_tokens, those the input images fill


@dataclass
class Finished:
    """Totals of the request, the last output."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0
    images: int = 0
    finish_reasons: tuple[FinishReason, ...] = ()


Output = Text | BoxesFound | Image | Partial | TokenUsage | Finished


@dataclass
class _Merge:
    """Producers feeding one queue; the consumer ends when all are done or one fails."""

    queue: asyncio.Queue[Output | BaseException | None] = field(default_factory=asyncio.Queue)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    active: int = 0

    def spawn(self, produce: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.active += 1

        async def run() -> None:
            try:
                await produce()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.queue.put_nowait(exc)
            finally:
                self.queue.put_nowait(None)

        self.tasks.add(asyncio.get_running_loop().create_task(run()))

    async def outputs(self) -> AsyncIterator[Output]:
        try:
            while self.active:
                item = await self.queue.get()
                if item is None:
                    self.active -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                await asyncio.wait(self.tasks)


async def _diffusion(
    scope: RequestScope,
    events: AsyncIterator[Reply],
    output_format: str,
    choice: int,
    index: int,
    merge: _Merge,
) -> None:
    async for reply in events:
        event = reply.event
        if isinstance(event, PartialImage):
            data = await scope.read_blob(event.image)
            merge.queue.put_nowait(Partial(choice, index, event.partial_index, data, output_format))
        elif isinstance(event, ImageReady):
            data = await scope.read_blob(event.image)
            merge.queue.put_nowait(
                Image(
                    choice, index, data, event.output_format, event.width, event.height, event.seed
                )
            )


async def _submit_and_run(
    scope: RequestScope, job: DiffusionJob, choice: int, index: int, merge: _Merge
) -> None:
    events = await scope.submit(job, owns_blobs=True)
    await _diffusion(scope, events, job.output_format, choice, index, merge)


async def _drain(merge: _Merge, totals: Finished) -> AsyncIterator[Output]:
    async for output in merge.outputs():
        if isinstance(output, Image):
            totals.images += 1
        yield output
    yield totals


async def start_pipeline(
    scope: RequestScope, llm_job: ChatJob, image_job: ImageJobFactory | None
) -> AsyncIterator[Output]:
    """Submit the LLM job now; the returned iterator runs it and the images it emits.

    ``image_job`` None: images are not wanted and no diffusion job starts.
    """
    merge = _Merge()
    totals = Finished()
    events = await scope.submit(llm_job, owns_blobs=llm_job.allow_image_output)

    async def llm() -> None:
        async for reply in events:
            event = reply.event
            if isinstance(event, TextDelta):
                merge.queue.put_nowait(Text(event.choice, event.text, event.logprobs))
            elif isinstance(event, Boxes):
                merge.queue.put_nowait(BoxesFound(event.choice, event.boxes))
            elif isinstance(event, EmbeddingReady) and image_job is not None:
                for index, job in image_job(event):
                    merge.spawn(partial(_submit_and_run, scope, job, event.choice, index, merge))
            elif isinstance(event, Usage):
                totals.prompt_tokens += event.prompt_tokens
                totals.completion_tokens += event.completion_tokens
                totals.image_tokens += event.prompt_image_tokens or 0
                merge.queue.put_nowait(
                    TokenUsage(totals.prompt_tokens, totals.completion_tokens, totals.image_tokens)
                )
            elif isinstance(event, Done):
                totals.finish_reasons = event.finish_reasons

    merge.spawn(llm)
    return _drain(merge, totals)


async def start_images(scope: RequestScope, jobs: Sequence[DiffusionJob]) -> AsyncIterator[Output]:
    """Submit diffusion jobs now (variations: no LLM); image ``i`` is job ``i``'s, choice 0."""
    merge = _Merge()
    totals = Finished(finish_reasons=("stop",))
    for index, job in enumerate(jobs):
        events = await scope.submit(job, owns_blobs=True)
        merge.spawn(partial(_diffusion, scope, events, job.output_format, 0, index, merge))
    return _drain(merge, totals)
