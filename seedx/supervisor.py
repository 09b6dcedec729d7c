"""A small process supervisor for ``seedx serve``: children started, watched, restarted, stopped.

Each child is a ``seedx`` subcommand run with the same Python. Its output lines are prefixed with
its name, so one terminal shows the whole stack. A child that exits on its own is restarted with
exponential backoff (reset once it has stayed up for a while), so a crashed worker comes back
without taking the others down. On SIGINT/SIGTERM every child gets SIGTERM (workers drain and
stop what they started), then its process group SIGKILL after the grace period; the supervisor
never leaves orphans behind, and a child gets SIGTERM from the kernel when the supervisor dies
without a word (:mod:`seedx.lifetime`).

Until the stack has been ready once, a child that exits is a start-up failure, not a crash: a
taken port, a missing model file or a bad setting fails the same way on every restart, so the
supervisor says which child failed and why (its last line), stops the rest and ``run`` returns 1.
A child that exits with :data:`workers.startup.EXIT_STARTUP` is never restarted, ready or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from seedx.lifetime import die_with_parent
from workers.startup import EXIT_STARTUP

logger = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0
STABLE_AFTER_S = 60.0  # a child up this long gets its backoff reset
# Workers run at a lower CPU priority than the gateway on a shared host: they are throughput
# work that saturates every core (vLLM's CPU engine, UNet steps), while the gateway's answers
# (a 429, a stream chunk, /readyz) are latency-critical and cost well under a millisecond each.
WORKER_NICENESS = 10


def lower_priority(niceness: int = WORKER_NICENESS) -> None:
    """``preexec_fn`` of a worker child: raise its niceness (best effort)."""
    with contextlib.suppress(OSError):
        os.nice(niceness)


@dataclass
class ChildSpec:
    """One supervised process: a name for its log prefix, argv and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    niceness: int = 0  # > 0: a batch worker, scheduled behind the latency-critical gateway
    metrics_port: int = 0  # a worker's /metrics port (0: none), for the ready line


@dataclass
class _Child:
    spec: ChildSpec
    backoff_s: float
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=8))

    def last_words(self) -> str:
        """The child's last non-empty output line: what a start-up failure said."""
        return next((line for line in reversed(self.last_lines) if line.strip()), "")


Ready = Callable[[], Coroutine[Any, Any, bool]]
"""Waits until the stack answers: True once it does, False when it gave up waiting."""


class Supervisor:
    """Runs children until stopped; ``ready`` is awaited once: until it returns True, a child
    that exits fails the whole start-up (``failure`` says which and why)."""

    def __init__(
        self,
        specs: list[ChildSpec],
        *,
        grace_s: float = 30.0,
        backoff_start_s: float = BACKOFF_START_S,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.backoff_start_s = backoff_start_s
        self.children = [_Child(spec, backoff_start_s) for spec in specs]
        self.grace_s = grace_s
        self.out = out or (lambda line: print(line, flush=True))
        self._stopping = asyncio.Event()
        width = max((len(spec.name) for spec in specs), default=0)
        self._width = width
        self._starting = False  # True while a `ready` check runs and has not yet succeeded
        self.failure: str | None = None

    def stop(self) -> None:
        self._stopping.set()

    def fail(self, reason: str) -> None:
        """Stops everything; ``run`` then returns 1 and the reason is the last line printed."""
        if self.failure is None:
            self.failure = reason
        self.stop()

    async def run(self, ready: Ready | None = None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        self._starting = ready is not None
        watchers = [asyncio.create_task(self._watch(child)) for child in self.children]
        announcer = asyncio.create_task(self._announce(ready)) if ready else None
        try:
            await self._stopping.wait()
        finally:
            if announcer is not None:
                announcer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await announcer
            await self._terminate_all()
            # Watchers end once their child's output is read to the end; cancel only laggards.
            _, late = await asyncio.wait(watchers, timeout=self.grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if self.failure is not None:
            self.out(self.failure)
            return 1
        return 0

    async def _announce(self, ready: Ready) -> None:
        if await ready():
            self._starting = False
        else:
            self.fail("seedx serve: the stack did not become ready; stopping (see the lines above)")

    async def _spawn(self, child: _Child) -> asyncio.subprocess.Process:
        env = {**os.environ, **child.spec.env, "PYTHONUNBUFFERED": "1"}
        tie = die_with_parent()
        niceness = child.spec.niceness

        def preexec() -> None:
            tie()
            if niceness:
                lower_priority(niceness)

        process = await asyncio.create_subprocess_exec(
            *child.spec.argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
            preexec_fn=preexec,
        )
        child.process = process
        return process

    async def _pump(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        prefix = f"{child.spec.name:<{self._width}} | "
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            child.last_lines.append(line)
            self.out(prefix + line)

    async def _watch(self, child: _Child) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            process = await self._spawn(child)
            pump = asyncio.create_task(self._pump(child, process))
            try:
                code = await _exited(process)
                await self._stop_leftovers(process, pump)
                if self._stopping.is_set():
                    return
            finally:
                if not pump.done():  # we are cancelled: a cancelled pump leaves its pipe open
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
            if code == EXIT_STARTUP or self._starting:
                said = child.last_words()
                self.fail(
                    f"seedx serve: {child.spec.name} could not start (exit code {code})"
                    + (f": {said}" if said else "")
                    + "; stopping"
                )
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                child.backoff_s = self.backoff_start_s
            child.restarts += 1
            self.out(
                f"{child.spec.name} exited with code {code}; restarting in "
                f"{child.backoff_s:.0f} s (restart {child.restarts})"
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), child.backoff_s)
            child.backoff_s = min(child.backoff_s * 2, BACKOFF_CAP_S)

    async def _stop_leftovers(
        self, process: asyncio.subprocess.Process, pump: asyncio.Task[None]
    ) -> None:
        """Stops what a dead child started: vLLM's engine core shares the child's process group
        and would otherwise live on holding the model's memory (and the output pipe, so the
        pump would never end). SIGTERM lets it shut down in order; SIGKILL after ``grace_s``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):  # an empty group
                os.killpg(process.pid, sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), self.grace_s)
                return

    async def _terminate_all(self) -> None:
        """SIGTERM to each child alone: a worker stops what it started in order (the LLM
        worker's vLLM engine core and its workers release their shared memory), which a signal
        to the whole group would cut short (vLLM's processes then abort and Python's resource
        tracker reports leaked shared memory). Leftovers get the group signals afterwards
        (``_stop_leftovers``); a child still running after ``grace_s``, SIGKILL with its group."""
        running = [
            c.process
            for c in self.children
            if c.process is not None and c.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for process in running:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(process.wait(), remaining)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def _exited(process: asyncio.subprocess.Process, poll_s: float = 0.1) -> int:
    """The exit code once the child has exited. Not ``process.wait()``: on Python 3.11 that
    waits for the output pipe to close as well, and a grandchild (vLLM's engine core)
    inherited it."""
    while process.returncode is None:
        await asyncio.sleep(poll_s)
    return process.returncode


def seedx_argv(*args: str) -> list[str]:
    """``seedx ARGS`` with this interpreter, so a venv without the script on PATH works too."""
    return [sys.executable, "-m", "seedx.cli", *args]
