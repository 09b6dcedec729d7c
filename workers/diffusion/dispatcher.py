"""The asyncio side of batching: tickets for waiting jobs, and one device thread that runs batches.

Each job handler :meth:`~BatchDispatcher.submit`\\ s its request and reads the ticket's outputs.
One background task takes the next ready batch from the :class:`~workers.diffusion.batching.
BatchQueue` and runs it with :meth:`BatchRunner.run` on a single dedicated thread, so the event
loop stays free for heartbeats, lease renewals, cancellation polls and blob I/O while the device
works (``workers.worker`` requires handlers not to block it), and batches never overlap on the
device.

A job whose deadline passed while it waited is answered ``deadline_exceeded`` when its batch
forms, without touching the device. :meth:`~BatchDispatcher.withdraw` (the handler's ``finally``)
takes a waiting job out of the queue, or flags a running one so the runner drops it from its
batch after the current step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Protocol

from workers.diffusion import metrics
from workers.diffusion.batching import BatchPolicy, BatchQueue
from workers.diffusion.errors import DiffusionError, InternalError
from workers.diffusion.requests import DiffusionRequest
from workers.diffusion.runner import Failure, Finished, Output

logger = logging.getLogger(__name__)


class DeadlinePassed(DiffusionError):
    """The job's deadline passed while it waited for a batch."""

    code = "deadline_exceeded"


class Runner(Protocol):
    """What the dispatcher runs batches with (``BatchRunner``, or a fake in tests)."""

    def run(self, items: Sequence[Ticket]) -> None:
        """Runs one batch to the end, blocking; never raises."""


class Ticket:
    """One submitted job: its request, its stop flag and its outputs (in emission order).

    Outputs after the first terminal one (``Finished``/``Failure``) are ignored, so a late error
    of a failing batch cannot contradict an image already delivered.
    """

    def __init__(self, request: DiffusionRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.submitted = time.monotonic()
        self._loop = loop
        self._outputs: asyncio.Queue[Output] = asyncio.Queue()
        self._stopped = False
        self._terminal = False

    @property
    def stopped(self) -> bool:
        """Set by :meth:`BatchDispatcher.withdraw`; read by the device thread between steps."""
        return self._stopped

    def emit(self, output: Output) -> None:
        """Queue an output for the handler; callable from any thread."""
        if self._terminal:
            return
        if isinstance(output, (Finished, Failure)):
            self._terminal = True
        self._loop.call_soon_threadsafe(self._outputs.put_nowait, output)

    async def next_output(self, stop: asyncio.Event) -> Output | None:
        """The next output, or None once ``stop`` is set (the job no longer needs results)."""
        if stop.is_set():
            return None
        getter = asyncio.ensure_future(self._outputs.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        return getter.result() if getter.done() and not getter.cancelled() else None


class BatchDispatcher:
    """Groups submitted requests into batches and runs them one at a time on a device thread.

    Use as an async context manager (or :meth:`start` / :meth:`close`) inside the event loop.
    """

    def __init__(
        self,
        runner: Runner,
        policy: BatchPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._runner = runner
        self._queue: BatchQueue[Ticket] = BatchQueue(policy)
        self._clock = clock
        self._wall_clock = wall_clock
        self._wake = asyncio.Event()
        self._device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusion-device")
        self._task: asyncio.Task[None] | None = None
        self.running: list[Ticket] = []
        self.batches = 0

    @property
    def waiting(self) -> int:
        """Jobs waiting for a batch."""
        return len(self._queue)

    async def start(self) -> None:
        """Starts the batching task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="diffusion-dispatcher")

    async def close(self) -> None:
        """Stops batching: waiting jobs are stopped, the running batch finishes or drains."""
        for ticket in self._queue.items():
            self.withdraw(ticket)
        for ticket in self.running:
            ticket._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(None, self._device.shutdown)

    async def __aenter__(self) -> BatchDispatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def submit(self, request: DiffusionRequest) -> Ticket:
        """Queues ``request`` for batching; read its outputs from the returned ticket."""
        ticket = Ticket(request, asyncio.get_running_loop())
        self._queue.add(
            ticket,
            request.key,
            priority=request.priority,
            pixels=request.pixels,
            now=self._clock(),
        )
        metrics.WAITING.set(len(self._queue))
        self._wake.set()
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """Nobody waits for ``ticket`` any more: unqueue it, or drop it from its batch."""
        ticket._stopped = True
        if self._queue.remove(ticket):
            metrics.WAITING.set(len(self._queue))

    async def _loop(self) -> None:
        while True:
            batch = self._queue.next_batch(self._clock())
            if batch is None:
                delay = self._queue.ready_in(self._clock())
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                continue
            metrics.WAITING.set(len(self._queue))
            batch = self._expire(batch)
            if batch:
                await self._run(batch)

    def _expire(self, batch: list[Ticket]) -> list[Ticket]:
        """Answers the jobs whose deadline passed while they waited; returns the others."""
        now = self._wall_clock()
        live = []
        for ticket in batch:
            if ticket.request.deadline <= now:
                ticket.emit(Failure(DeadlinePassed("the job's deadline passed before it started")))
            else:
                live.append(ticket)
        return live

    async def _run(self, batch: list[Ticket]) -> None:
        now = self._wall_clock()
        for ticket in batch:
            metrics.QUEUE_WAIT.observe(max(0.0, now - ticket.request.created_at))
        self.running = batch
        self.batches += 1
        loop = asyncio.get_running_loop()
        try:
            # Shielded: on close the thread must finish its batch (stopped jobs drop out at the
            # next step) before the device executor shuts down.
            await asyncio.shield(loop.run_in_executor(self._device, self._runner.run, batch))
        except Exception:
            logger.exception("batch runner raised")
            for ticket in batch:
                ticket.emit(Failure(InternalError("internal error in the diffusion worker")))
        finally:
            self.running = []
