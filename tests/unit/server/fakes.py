"""A fake :class:`server.backend.Backend`: in-memory blobs, scripted workers, no Redis.

Each stage has a *script*: an async generator ``script(job, backend)`` yielding the events a
worker would send. The fake wraps them in ``Reply`` envelopes, records every job, cancellation
and blob, and can be told to refuse submissions (overload, outage) or to report queue loads and
live workers, so gateway logic is tested without a transport.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from workers import keys
from workers.errors import BlobMissing, TransportError
from workers.protocol import (
    BlobRef,
    Boxes,
    ChatJob,
    Done,
    EmbeddingReady,
    Event,
    ImageReady,
    Job,
    PartialImage,
    Reply,
    Started,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
    WorkerInfo,
    new_id,
)

Script = Callable[[Job, "FakeBackend"], AsyncIterator[Event]]


def png_bytes(
    width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    """A small valid PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeBlobs:
    """Blobs in a dict; owners tracked like ``BlobStore``."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.owners: dict[str, set[str]] = {}
        self.released: list[str] = []

    async def put(
        self,
        data: bytes,
        *,
        content_type: str | None = None,
        owner: str | None = None,
        ttl_s: float | None = None,
    ) -> BlobRef:
        ref = BlobRef(key=keys.blob_key(new_id()), nbytes=len(data), content_type=content_type)
        self.data[ref.key] = data
        if owner is not None:
            self.owners.setdefault(owner, set()).add(ref.key)
        return ref

    def put_tensor_ref(self) -> BlobRef:
        key = keys.blob_key(new_id())
        self.data[key] = b"\0" * 8
        return BlobRef(key=key, dtype="float16", shape=(2, 2), nbytes=8)

    async def get(self, ref: BlobRef) -> bytes:
        if ref.key not in self.data:
            raise BlobMissing(f"blob {ref.key} does not exist")
        return self.data[ref.key]

    async def release(self, owner: str) -> int:
        self.released.append(owner)
        keys_ = self.owners.pop(owner, set())
        for key in keys_:
            self.data.pop(key, None)
        return len(keys_)


class FakeStream:
    """The events of one job, produced by running its stage script."""

    def __init__(self, job: Job, backend: FakeBackend, script: Script) -> None:
        self.job = job
        self._backend = backend
        self._script = script
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[Reply]:
        seq = 0
        try:
            async for event in self._script(self.job, self._backend):
                yield Reply(
                    job_id=self.job.job_id,
                    request_id=self.job.request_id,
                    attempt=1,
                    seq=seq,
                    event=event,
                )
                seq += 1
                if isinstance(event, Done) or getattr(event, "type", "") == "failed":
                    return
        except TransportError:
            raise

    def close(self) -> None:
        self.closed = True


def _fake_logprobs(job: ChatJob, piece: str) -> tuple[TokenLogprob, ...] | None:
    """One entry per piece when the job asks: logprob -0.5, alternatives -1, -2, ..."""
    top = job.sampling.logprobs
    if top is None:
        return None
    raw = tuple(piece.encode())
    alternatives = tuple(
        TopLogprob(token=f"alt{k}", logprob=-1.0 - k, bytes=tuple(f"alt{k}".encode()))
        for k in range(top)
    )
    return (TokenLogprob(token=piece, logprob=-0.5, bytes=raw, top_logprobs=alternatives),)


async def llm_script(job: Job, backend: FakeBackend) -> AsyncIterator[Event]:
    """A fake LLM worker: text per choice, optional boxes, an embedding when images are allowed."""
    assert isinstance(job, ChatJob)
    yield Started(worker_id="fake-llm", queue_wait_s=0.001)
    for choice in range(job.sampling.n):
        for piece in backend.llm_text:
            await asyncio.sleep(backend.token_delay_s)
            if backend.cancelled_event(job.job_id).is_set():
                return
            yield TextDelta(text=piece, choice=choice, logprobs=_fake_logprobs(job, piece))
        if backend.llm_boxes:
            yield Boxes(boxes=backend.llm_boxes, choice=choice)
        if job.allow_image_output and backend.llm_images:
            for index in range(backend.llm_images):
                ref = backend.blobs.put_tensor_ref()
                yield EmbeddingReady(embedding=ref, image_index=index, choice=choice)
    yield Usage(prompt_tokens=7, completion_tokens=len(backend.llm_text) * job.sampling.n)
    yield Done(finish_reasons=("stop",) * job.sampling.n)


async def diffusion_script(job: Job, backend: FakeBackend) -> AsyncIterator[Event]:
    """A fake diffusion worker: previews, then a PNG of the job's size."""
    yield Started(worker_id="fake-diffusion", queue_wait_s=0.002)
    width, height = getattr(job, "width", 64), getattr(job, "height", 64)
    for index in range(getattr(job, "partial_images", 0)):
        ref = await backend.blobs.put(png_bytes(8, 8), owner=job.request_id)
        yield PartialImage(image=ref, partial_index=index)
    await asyncio.sleep(backend.image_delay_s)
    if backend.cancelled_event(job.job_id).is_set():
        return
    ref = await backend.blobs.put(png_bytes(width, height), owner=job.request_id)
    yield ImageReady(image=ref, width=width, height=height, output_format="png", seed=job_seed(job))
    yield Done()


def job_seed(job: Job) -> int | None:
    return getattr(job, "seed", None)


@dataclass
class FakeBackend:
    """See the module docstring."""

    workers: list[WorkerInfo] = field(default_factory=list)
    loads: dict[tuple[str, str], int] = field(default_factory=dict)
    scripts: dict[str, Script] = field(
        default_factory=lambda: {"llm": llm_script, "diffusion": diffusion_script}
    )
    llm_text: tuple[str, ...] = ("Hello", " world")
    llm_boxes: tuple[Any, ...] = ()
    llm_images: int = 0
    token_delay_s: float = 0.0
    image_delay_s: float = 0.0
    submit_error: TransportError | None = None
    connected: bool = True
    last_outage: tuple[float, float] | None = None
    redis_up: bool = True
    blobs: FakeBlobs = field(default_factory=FakeBlobs)
    jobs: list[Job] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    started: bool = False
    _cancel_events: dict[str, asyncio.Event] = field(default_factory=dict)

    reply_to: str = keys.reply_stream("fake")

    def cancelled_event(self, job_id: str) -> asyncio.Event:
        return self._cancel_events.setdefault(job_id, asyncio.Event())

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def submit(self, job: Job) -> FakeStream:
        if self.submit_error is not None:
            raise self.submit_error
        self.jobs.append(job)
        return FakeStream(job, self, self.scripts[job.stage])

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self.cancelled_event(job_id).set()

    async def ping(self) -> bool:
        return self.redis_up

    async def live_workers(self) -> list[WorkerInfo]:
        return list(self.workers)

    async def queue_load(self, stage: keys.Stage, model: str) -> int:
        return self.loads.get((stage, model), 0)

    def serve(self, stage: keys.Stage, model: str) -> None:
        """Add a live worker of ``stage`` for ``model``."""
        now = time.time()
        self.workers.append(
            WorkerInfo(
                worker_id=f"{stage}-{model}-{len(self.workers)}",
                stage=stage,
                model=model,
                capacity=4,
                load=0,
                host="test",
                pid=1,
                started_at=now - 10,
                heartbeat_at=now,
            )
        )

    def jobs_of(self, kind: str) -> list[Job]:
        return [job for job in self.jobs if job.kind == kind]
