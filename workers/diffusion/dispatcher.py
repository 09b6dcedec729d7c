"""The asyncio side of batching: tickets for waiting jobs, and one device thread that runs batches.

Each job handler :meth:`~BatchDispatcher.submit`\\ s its request and reads the ticket's outputs.
One background task takes the next ready batch from the :class:`~workers.diffusion.batching.
BatchQueue` and runs it with :meth:`BatchRunner.run` on the process's one torch thread
(:class:`~workers.diffusion.device_thread.DeviceThread`, which also loaded the pipeline), so
the event loop stays free for heartbeats, lease renewals, cancellation polls and blob I/O while
the device works (``workers.worker`` requires handlers not to block it), and batches never
overlap on the device.

Step-level batching (the default, issue 25): the runner calls back at every step boundary, from
the device thread, to take waiting jobs of its group into the running batch
(:meth:`BatchQueue.take`); the queue is shared with the event loop under a lock, and its
operations are short bookkeeping. Batch-level batching (``step_level=False``) gives the runner
no such callback: a job arriving while a batch runs waits for the whole batch.

A job whose deadline passed while it waited is answered ``deadline_exceeded`` when its batch
forms, without touching the device. :meth:`~BatchDispatcher.withdraw` (the handler's ``finally``)
takes a waiting job out of the queue, or flags a running one so the runner drops it from its
batch after the current step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from types import TracebackType
from typing import Protocol

from workers.diffusion import metrics
from workers.diffusion.batching import BatchPolicy, BatchQueue
from workers.diffusion.device_thread import DeviceThread
from workers.diffusion.errors import DiffusionError, InternalError
from workers.diffusion.requests import DiffusionRequest
from workers.diffusion.runner import Failure, Finished, Output

logger = logging.getLogger(__name__)


class DeadlinePassed(DiffusionError):
    """The job's deadline passed while it waited for a batch."""

    code = "deadline_exceeded"


class Runner(Protocol):
    """What the dispatcher runs batches with (``BatchRunner``, or a fake in tests)."""

    def run(self, items: Sequence[Ticket], admit: Callable[[int], Sequence[Ticket]] | None) -> None:
        """Runs one batch to the end, blocking, taking joiners from ``admit``; never raises."""


class Ticket:
    """One submitted job: its request, its stop flag and its outputs (in emission order).

    Outputs after the first terminal one (``Finished``/``Failure``) are ignored, so a late error
    of a failing batch cannot contradict an image already delivered.
    """

    def __init__(self, request: DiffusionRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.submitted = time.monotonic()
        self.started: float | None = None  # monotonic, when it joined a batch
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
        device: DeviceThread,
        step_level: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._runner = runner
        self._queue: BatchQueue[Ticket] = BatchQueue(policy)
        self._lock = threading.Lock()  # the queue, shared with the device thread's admissions
        self.step_level = step_level
        self._clock = clock
        self._wall_clock = wall_clock
        self._wake = asyncio.Event()
        self._device = device  # its owner closes it, after this dispatcher
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
        with self._lock:
            waiting = self._queue.items()
        for ticket in waiting:
            self.withdraw(ticket)
        for ticket in list(self.running):
            ticket._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

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
        with self._lock:
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
        with self._lock:
            if self._queue.remove(ticket):
                metrics.WAITING.set(len(self._queue))

    async def _loop(self) -> None:
        while True:
            with self._lock:
                batch = self._queue.next_batch(self._clock())
                delay = self._queue.ready_in(self._clock()) if batch is None else None
                metrics.WAITING.set(len(self._queue))
            if batch is None:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                continue
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

    def _start(self, tickets: list[Ticket]) -> None:
        """The tickets join the running batch now."""
        now, started = self._wall_clock(), self._clock()
        for ticket in tickets:
            ticket.started = started
            metrics.QUEUE_WAIT.observe(max(0.0, now - ticket.request.created_at))
        self.running.extend(tickets)

    def _admit(self, key: Hashable, running: int) -> list[Ticket]:
        """Called by the runner (device thread) at each step boundary: the joining tickets."""
        with self._lock:
            taken = self._queue.take(key, running, self._clock())
            if taken:
                metrics.WAITING.set(len(self._queue))
        live = self._expire(taken)
        self._start(live)
        return live

    async def _run(self, batch: list[Ticket]) -> None:
        self.running = []
        self._start(batch)
        self.batches += 1
        admit = functools.partial(self._admit, batch[0].request.key) if self.step_level else None
        try:
            # Shielded: on close the thread finishes its batch (stopped jobs drop out at the next
            # step) before the device thread's owner closes it.
            await asyncio.shield(self._device.run(self._runner.run, batch, admit))
        except Exception:
            logger.exception("batch runner raised")
            for ticket in list(self.running):
                ticket.emit(Failure(InternalError("internal error in the diffusion worker")))
        finally:
            self.running = []
