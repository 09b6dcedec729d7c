"""One request's jobs: envelope fields, submission, cancellation and cleanup.

A :class:`RequestScope` is opened per API request. Every job of the request is submitted through
it, so it knows which have not finished; when the request ends for any reason other than all of
them finishing — the client disconnected (the task is cancelled), the deadline passed, another
job of the request failed — it cancels those in their workers, so no GPU keeps working for a
client who left (issue 9, item 4). It also frees the blobs the request and its jobs own
(input images, visual embeddings, output images) instead of leaving them to their TTL.

Once a request's first job is accepted, its later Redis steps (the next job of a pipeline, reading
the blobs its jobs produced) wait out a Redis outage (a Sentinel failover's election, a restart)
for up to ``outage_s`` (the gateway's ``queue.reply_outage_s``, as long as the reply reader waits)
instead of failing an accepted request with 503; admission itself still refuses at once.

Cancellation and cleanup run in a background task held by the :class:`Dispatcher`, because the
request's own task may be in the middle of being cancelled; :meth:`Dispatcher.drain` awaits them
at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from server.backend import Backend
from server.errors import error_of_payload
from server.metrics import JOBS_CANCELLED, QUEUE_WAIT
from workers import keys
from workers.connection import Backoff
from workers.errors import TransportError, Unavailable
from workers.protocol import BlobRef, Failed, Job, Reply, Started, new_id

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_CLEANUP_TIMEOUT_S = 10.0


def fresh_seed() -> int:
    """A seed for jobs the client gave none: a reclaimed job then replays the same stream."""
    return random.randrange(2**31)


class Dispatcher:
    """Opens request scopes and owns their background cleanup."""

    def __init__(self, backend: Backend, outage_s: float = 0.0) -> None:
        self.backend = backend
        self.outage_s = outage_s
        self._cleanups: set[asyncio.Task[None]] = set()

    def scope(
        self,
        request_id: str,
        timeout_s: float,
        on_unsubmitted: Callable[[], None] | None = None,
    ) -> RequestScope:
        """A scope whose jobs share ``request_id`` and a deadline ``timeout_s`` from now.

        ``on_unsubmitted`` runs when the scope ends without having queued any job (the
        admission reservation of a request refused while its inputs were checked).
        """
        return RequestScope(self, request_id, time.time() + timeout_s, on_unsubmitted)

    def spawn_cleanup(self, cancel: list[tuple[str, keys.Stage]], owners: list[str]) -> None:
        """Cancel ``cancel`` jobs and release ``owners``' blobs in the background."""
        if not cancel and not owners:
            return
        task = asyncio.get_running_loop().create_task(self._cleanup(cancel, owners))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _cleanup(self, cancel: list[tuple[str, keys.Stage]], owners: list[str]) -> None:
        try:
            for job_id, stage in cancel:
                await self.backend.cancel(job_id)
                JOBS_CANCELLED.labels(stage).inc()
                logger.info("cancelled job %s (%s): its request ended first", job_id, stage)
            for owner in owners:
                await self.backend.blobs.release(owner)
        except TransportError as exc:  # Redis down: flags/blobs expire by TTL anyway
            logger.warning("request cleanup incomplete: %s", exc)

    async def drain(self) -> None:
        """Wait for pending cleanups (at shutdown)."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=_CLEANUP_TIMEOUT_S)


class RequestScope:
    """The jobs and blobs of one request; an async context manager (see module docstring)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        request_id: str,
        deadline: float,
        on_unsubmitted: Callable[[], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self.deadline = deadline
        self._on_unsubmitted = on_unsubmitted
        self._submitted = False
        self._dispatcher = dispatcher
        self._backend = dispatcher.backend
        self._running: dict[str, keys.Stage] = {}
        self._owners: list[str] = []

    def envelope(self) -> dict[str, Any]:
        """The envelope fields of a new job of this request (fresh ``job_id``)."""
        return {
            "job_id": new_id(),
            "request_id": self.request_id,
            "trace_id": self.request_id,
            "deadline": self.deadline,
            "created_at": time.time(),
            "reply_to": self._backend.reply_to,
        }

    async def put_blob(self, data: bytes, content_type: str) -> BlobRef:
        """Store an input of this request (freed when the request ends)."""
        if self.request_id not in self._owners:
            self._owners.append(self.request_id)
        return await self._backend.blobs.put(data, content_type=content_type, owner=self.request_id)

    async def read_blob(self, ref: BlobRef) -> bytes:
        """The bytes of a blob a job produced."""
        return await self._through_outage(lambda: self._backend.blobs.get(ref))

    async def _through_outage(self, step: Callable[[], Awaitable[_T]]) -> _T:
        """``step()``; once the request has a job accepted, retried with backoff while Redis is
        unreachable, for up to the dispatcher's ``outage_s`` and never past the deadline."""
        if not self._submitted or self._dispatcher.outage_s <= 0:
            return await step()
        give_up_at = min(self.deadline, time.time() + self._dispatcher.outage_s)
        backoff = Backoff(cap_s=1.0)
        while True:
            try:
                return await step()
            except Unavailable:
                delay = backoff.next_delay()
                if time.time() + delay >= give_up_at:
                    raise
                await asyncio.sleep(delay)

    async def submit(self, job: Job, *, owns_blobs: bool = False) -> AsyncIterator[Reply]:
        """Enqueue ``job`` and iterate its events; a ``Failed`` event is raised as its error.

        ``owns_blobs``: the job may store blobs (embeddings, images) owned by its ``job_id``
        (the LLM worker) or ``request_id`` (the diffusion worker); released with the request.
        """
        stream = await self._through_outage(lambda: self._backend.submit(job))
        self._submitted = True
        self._running[job.job_id] = job.stage
        if owns_blobs:
            self._owners += [o for o in (job.job_id, self.request_id) if o not in self._owners]
        return self._iterate(job, stream)

    async def _iterate(self, job: Job, stream: Any) -> AsyncIterator[Reply]:
        # A transport error (deadline, lost reply stream) leaves the job in _running: a worker
        # may still hold it, so the scope cancels it.
        try:
            async for reply in stream:
                event = reply.event
                if isinstance(event, Started):
                    QUEUE_WAIT.labels(job.stage).observe(event.queue_wait_s)
                    continue
                if reply.is_terminal:
                    self._running.pop(job.job_id, None)
                if isinstance(event, Failed):
                    raise error_of_payload(event.error)
                yield reply
        finally:
            stream.close()

    async def __aenter__(self) -> RequestScope:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._submitted and self._on_unsubmitted is not None:
            self._on_unsubmitted()
        cancel = list(self._running.items())
        self._running.clear()
        if cancel and exc_type is None:
            logger.warning("request %s ended with %d jobs running", self.request_id, len(cancel))
        self._dispatcher.spawn_cleanup(cancel, self._owners)


async def close_quietly(iterator: AsyncIterator[Any]) -> None:
    """``aclose`` an async generator if it is one (runs its ``finally`` now)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
