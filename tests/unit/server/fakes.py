"""A fake :class:`server.backend.Backend`: in-memory blobs, scripted workers, no Redis.

Each stage has a *script*: an async generator ``script(job, backend)`` yielding the events a
worker would send. The fake wraps them in ``Reply`` envelopes, records every job, cancellation
and blob, and can be told to refuse submissions (overload, outage) or to report queue loads and
live workers, so gateway logic is tested without a transport.

The same scripts also run in real workers on a real Redis
(:class:`tests.unit.server.redis_backend.RedisScriptedBackend`, the ``redis`` param of the
``backend`` fixture), so the fake keeps the contracts of the real parts it stands in for, where
that is cheap (issue 21):

- one subscription per job: submitting a ``job_id`` whose events are still awaited raises the
  ``ValueError`` that :meth:`workers.replies.ReplyReader.subscribe` raises, and a job must name
  this backend's ``reply_to`` (as :meth:`workers.transport.Transport.submit` demands);
- what the worker loop (``workers.execution``) adds around a handler: ``Started`` first, ``Done``
  when the script just ends (``Failed(cancelled)`` when it ends after a cancellation), and a
  ``Failed`` event for a script that raises anything but a :class:`TransportError`;
- a stream is one pass, like a ``Subscription``: iterating it again resumes (or ends), it stops
  after ``close()``, and it ends with ``DeadlineExceeded`` a grace period after the job's
  deadline instead of hanging.

A script that *raises* a :class:`TransportError` plays the reply reader's side (a deadline or an
outage surfacing in the gateway): the fake raises it from the stream. Scripts must not block the
event loop and must use ``backend`` (blobs, knobs, ``cancelled_event``) rather than fake-only
state, so that they run unchanged in a real worker.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from workers import keys
from workers.blobs import checksum
from workers.errors import BlobMissing, Cancelled, DeadlineExceeded, TransportError
from workers.handler import failure_event
from workers.protocol import (
    BlobRef,
    Boxes,
    ChatJob,
    Done,
    EmbeddingReady,
    ErrorPayload,
    Event,
    Failed,
    FinishReason,
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
from workers.settings import QueueSettings
from workers.transport import QueueStats

Script = Callable[[Job, Any], AsyncIterator[Event]]
"""``script(job, backend)``: ``backend`` is a :class:`FakeBackend` or, in a real worker, a
``RedisScriptedBackend``; both offer the knobs below, ``blobs`` and ``cancelled_event``."""

REPLY_GRACE_S = QueueSettings().reply_grace_s
"""How long past a job's deadline a stream still waits, as the real reply reader does."""


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
        ref = BlobRef(
            key=keys.blob_key(new_id()),
            nbytes=len(data),
            content_type=content_type,
            checksum=checksum(data),
        )
        self._store(ref, data, owner)
        return ref

    async def put_tensor(
        self, array: NDArray[np.generic], *, owner: str | None = None, ttl_s: float | None = None
    ) -> BlobRef:
        """A tensor blob, referenced as ``BlobStore.put_tensor`` references one."""
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        ref = BlobRef(
            key=keys.blob_key(new_id()),
            nbytes=len(data),
            content_type="application/x-seedx-tensor",
            dtype=array.dtype.name,  # type: ignore[arg-type]  # the scripts pass float16
            shape=tuple(int(dim) for dim in array.shape),
            checksum=checksum(data),
        )
        self._store(ref, data, owner)
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

    def _store(self, ref: BlobRef, data: bytes, owner: str | None) -> None:
        self.data[ref.key] = data
        if owner is not None:
            self.owners.setdefault(owner, set()).add(ref.key)


class FakeStream:
    """The events of one job, produced by running its stage script (one pass, like a
    ``Subscription``; see the module docstring for what the worker loop's part adds)."""

    def __init__(self, job: Job, backend: FakeBackend, script: Script) -> None:
        self.job = job
        self._backend = backend
        self._script = script
        self._events: AsyncIterator[Reply] | None = None
        self._finished = False
        self.closed = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Reply:
        if self._finished:
            raise StopAsyncIteration
        if self._events is None:
            self._events = self._replies()
        timeout = max(0.0, self.job.deadline + REPLY_GRACE_S - time.time())
        try:
            async with asyncio.timeout(timeout):  # unlike wait_for, never swallows a cancel
                reply = await self._events.__anext__()
        except TimeoutError:
            self._finish()
            raise DeadlineExceeded(
                f"job {self.job.job_id} did not finish before its deadline"
            ) from None
        except BaseException:
            self._finish()
            raise
        if reply.is_terminal:
            self._finish()
        return reply

    async def _replies(self) -> AsyncIterator[Reply]:
        seq = 0
        stage = self.job.stage
        async for event in self._events_of_the_worker_loop():
            if seq == 0 and not isinstance(event, Started):
                yield self._reply(0, Started(worker_id=f"fake-{stage}", queue_wait_s=0.0))
                seq = 1
            yield self._reply(seq, event)
            seq += 1
            if isinstance(event, Done | Failed):
                return

    async def _events_of_the_worker_loop(self) -> AsyncIterator[Event]:
        """The script's events, ended the way ``workers.execution`` ends a handler's."""
        self._backend.received.append(self.job)
        try:
            async for event in self._script(self.job, self._backend):
                yield event
                if isinstance(event, Done | Failed):
                    return
        except TransportError:
            raise  # the reply reader's side: a deadline or an outage (see the module docstring)
        except Exception as exc:
            yield failure_event(exc)
            return
        if self._backend.cancelled_event(self.job.job_id).is_set():
            yield Failed(error=ErrorPayload.from_error(Cancelled("the job was cancelled")))
        else:
            yield Done()

    def _reply(self, seq: int, event: Event) -> Reply:
        return Reply(
            job_id=self.job.job_id,
            request_id=self.job.request_id,
            attempt=1,
            seq=seq,
            event=event,
        )

    def _finish(self) -> None:
        self._finished = True
        self._backend.unsubscribe(self.job.job_id, self)

    def close(self) -> None:
        self.closed = True
        self._finish()


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
                # owned by the job, as the real LLM worker stores its embeddings
                embedding = np.zeros((2, 2), dtype=np.float16)
                ref = await backend.blobs.put_tensor(embedding, owner=job.job_id)
                yield EmbeddingReady(embedding=ref, image_index=index, choice=choice)
    yield Usage(prompt_tokens=7, completion_tokens=len(backend.llm_text) * job.sampling.n)
    stop: tuple[FinishReason, ...] = ("stop",)
    yield Done(finish_reasons=stop * job.sampling.n)


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
    received: list[Job] = field(default_factory=list)
    """Every job a script ran for (as a worker received it)."""
    cancelled: list[str] = field(default_factory=list)
    started: bool = False
    _cancel_events: dict[str, asyncio.Event] = field(default_factory=dict)
    _subscriptions: dict[str, FakeStream] = field(default_factory=dict)

    reply_to: str = keys.reply_stream("fake")

    def cancelled_event(self, job_id: str) -> asyncio.Event:
        return self._cancel_events.setdefault(job_id, asyncio.Event())

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def submit(self, job: Job) -> FakeStream:
        """Like ``Transport.submit``: check ``reply_to``, subscribe, then enqueue (or refuse)."""
        if job.reply_to != self.reply_to:
            raise ValueError(f"job.reply_to must be {self.reply_to!r} to be answered here")
        if job.job_id in self._subscriptions:
            raise ValueError(f"job {job.job_id} already has a subscription")
        stream = FakeStream(job, self, self.scripts[job.stage])
        self._subscriptions[job.job_id] = stream
        if self.submit_error is not None:
            stream.close()
            raise self.submit_error
        self.jobs.append(job)
        return stream

    def unsubscribe(self, job_id: str, stream: FakeStream) -> None:
        """Forget a finished or closed stream (its ``job_id`` may be submitted again)."""
        if self._subscriptions.get(job_id) is stream:
            del self._subscriptions[job_id]

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self.cancelled_event(job_id).set()

    async def ping(self) -> bool:
        return self.redis_up

    async def live_workers(self) -> list[WorkerInfo]:
        return list(self.workers)

    async def queue_load(self, stage: keys.Stage, model: str) -> int:
        return self.loads.get((stage, model), 0)

    async def queue_stats(self, stage: keys.Stage, model: str) -> QueueStats:
        """``loads`` as queued jobs, none delivered (enough for the gateway's gauges)."""
        load = self.loads.get((stage, model), 0)
        return QueueStats(keys.job_stream(stage, model), load, 0, load, 0, 0.0)

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
