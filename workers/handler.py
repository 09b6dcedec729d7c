"""The contract between the worker loop and a job handler (the LLM or diffusion engine side).

A handler is an async generator: ``handler(job, ctx)`` yields events; it ends normally (the loop
sends ``Done``), yields its own ``Done``/``Failed``, or raises (the loop sends ``Failed``). It
checks ``ctx.stopped`` between steps: the loop sets it when the job is cancelled, passes its
deadline, or was reclaimed by another worker, and stops forwarding events at the next yield.

A handler whose engine can run nothing any more (vLLM's engine core died) raises
:class:`EngineDied`: the job is not the cause, so it is not answered ``Failed`` nor acknowledged;
the worker leaves (``Worker.fail``) and the job is taken over by another or a restarted worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from workers.blobs import BlobStore
from workers.errors import INTERNAL_ERROR, Cancelled, DeadlineExceeded, TransportError
from workers.protocol import ErrorPayload, Event, Failed, Job

logger = logging.getLogger(__name__)

StopReason = Literal["cancelled", "deadline_exceeded", "lost"]


@dataclass
class JobContext:
    """What a handler gets besides the job: identity, blobs, and the stop signal."""

    job: Job
    attempt: int
    worker_id: str
    blobs: BlobStore
    stop_reason: StopReason | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stopped(self) -> bool:
        """True once the job was cancelled, expired, or reclaimed: stop at the next step."""
        return self.stop_reason is not None

    def request_stop(self, reason: StopReason) -> None:
        """Ask the handler to stop (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_event.set()


Handler = Callable[[Job, JobContext], AsyncIterator[Event]]


class EngineDied(Exception):
    """The handler's engine is gone for good (its process died): no job can run on this worker
    any more. Raised instead of the engine's own error; see the module docstring."""


def stop_event(reason: StopReason | None) -> Failed | None:
    """The terminal event of a job stopped for ``reason`` (None: lost, nothing to send)."""
    if reason == "cancelled":
        return Failed(error=ErrorPayload.from_error(Cancelled("the job was cancelled")))
    if reason == "deadline_exceeded":
        error = DeadlineExceeded("the job's deadline passed while it was running")
        return Failed(error=ErrorPayload.from_error(error))
    return None


def failure_event(exc: Exception) -> Failed:
    """The Failed event for a handler exception: its own code if it has one, else internal."""
    if isinstance(exc, TransportError):
        return Failed(error=ErrorPayload.from_error(exc))
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        logger.warning("handler failed: %s", exc)
        payload = ErrorPayload(
            code=code[:64],
            message=str(exc)[:4096],
            param=getattr(exc, "param", None),
            retryable=bool(getattr(exc, "retryable", False)),
        )
        return Failed(error=payload)
    logger.exception("handler raised an unexpected error")
    return Failed(error=ErrorPayload(code=INTERNAL_ERROR, message="internal error in the worker"))


async def close_events(events: AsyncIterator[Event]) -> None:
    """Run the handler's cleanup (``finally`` blocks) when the loop stops iterating early."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
