"""Children that cannot outlive ``seedx serve``, however it ends.

Ctrl-C and SIGTERM are handled in order by the supervisor, but a process manager that loses
patience (SIGKILL a few seconds after SIGTERM), the OOM killer or a closed terminal ends
``seedx serve`` without a word to its children: the embedded Valkey, the gateway and the workers
would live on, holding their ports, the model's memory and the next ``seedx serve``'s place.

Each child therefore asks the kernel for a signal when its parent dies (``PR_SET_PDEATHSIG``,
Linux). SIGTERM, not SIGKILL: a worker then stops in order, and what it started itself (vLLM's
engine processes) follows it through :mod:`engine.vllm_plugin.lifeline`. The kernel sends the
signal when the *thread* that forked the child exits; ``seedx serve`` forks every child from its
main thread (the event loop's), which lives as long as the process.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    function: Callable[..., int] = libc.prctl
    return function


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that ties the child to this process: ``sig`` reaches the child when this
    process dies. Built before the fork (the library lookup is not async-signal-safe work to do
    in a forked child); a child whose parent already died before the call exits at once.

    Where the kernel has no such request (not Linux) the child is left as it is; the
    supervisor's orderly stop still covers Ctrl-C and SIGTERM there.
    """
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec


def exit_now(code: int) -> NoReturn:
    """Ends a ``seedx`` server process once its command has returned, without Python's teardown.

    What a normal exit does that matters runs first: non-daemon threads are joined and every
    ``atexit`` handler runs (log handlers flush, multiprocessing stops its children and
    releases shared memory), then the standard streams are flushed. What is skipped is the
    teardown after that: clearing every module and collecting torch's, vLLM's and diffusers'
    object graphs took 2-5 s per process on a busy 2-core host, after the command had nothing
    left to do (it pushed Ctrl-C of ``seedx serve`` past 10 s), and triton's extension then
    reports objects its module still held as "leaked". Only for the server commands
    (``seedx.cli.SERVER_COMMANDS``), whose stop path closes what they opened. vLLM's own
    processes get the closest thing their exit allows
    (:func:`engine.vllm_plugin.lifeline.quick_teardown`).
    """
    threading._shutdown()  # type: ignore[attr-defined]  # what Python's exit does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
