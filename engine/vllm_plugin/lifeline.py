"""vLLM's helper processes end when the process that started them dies.

vLLM runs the model in child processes (``VLLM::EngineCore`` and, under it, ``VLLM::Worker``).
Its workers watch the engine core through a pipe, but the engine core does not watch the front
end that spawned it: when an LLM worker is SIGKILLed (the OOM killer, a supervisor's hard stop,
our own chaos tests) the engine core is re-parented to init and lives on, holding the model's
memory — on a GPU host the replacement worker then finds no room to start. A lifeline thread in
every multiprocessing child notices the re-parenting and ends the process: its own children
(the engine core's model-runner workers) are killed outright — vLLM's orderly path would give
them five seconds to notice, on the CPUs the surviving workers are serving with — then SIGTERM,
so vLLM's handler tears the engine down, and a hard exit if that has not finished within
``grace_s``. Shared memory the killed workers held is unlinked by multiprocessing's resource
tracker once its last user is gone.

Polling ``getppid`` rather than ``PR_SET_PDEATHSIG``: the kernel sends the death signal when
the *thread* that forked the child exits, and the LLM worker builds its engine from whichever
thread it likes. Two checks a second cost nothing next to a model step.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

_started = False
_lock = threading.Lock()


def follow_parent(poll_s: float = 0.5, grace_s: float = 10.0) -> bool:
    """Starts the lifeline in a multiprocessing child; returns whether it runs.

    A process that multiprocessing did not start (the LLM worker itself, started by a shell,
    a supervisor or a container runtime) is left alone: ``nohup`` and a closed terminal must
    not end a server.
    """
    global _started
    if multiprocessing.parent_process() is None:
        return False
    parent = os.getppid()
    if parent <= 1:  # already orphaned, or the parent is init: nothing to follow
        return False
    with _lock:
        if _started:
            return True
        _started = True
    threading.Thread(
        target=_watch, args=(parent, poll_s, grace_s), name="seedx-lifeline", daemon=True
    ).start()
    return True


def _watch(parent: int, poll_s: float, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    log.warning(
        "parent process %d is gone; stopping this %s process (pid %d)",
        parent,
        multiprocessing.current_process().name,
        os.getpid(),
    )
    for child in _children(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(1)  # the orderly stop hung: nothing else may still hold the model's memory


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc; Linux, like vLLM's CPU and CUDA hosts)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def quick_teardown() -> None:
    """Makes this vLLM process's exit quick and quiet once its orderly stop is done.

    vLLM's engine core and model-runner processes spent 2-5 s each in the garbage collections
    of Python's teardown on a busy 2-core host (millions of objects of torch, vLLM and
    transformers), after their shutdown had finished. The engine core gives its worker 5 s
    (``VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS``) before SIGTERM, and the LLM worker waits for the
    engine core, so Ctrl-C of ``seedx serve`` took 13 s, with vLLM's warnings. At exit, after
    vLLM's own shutdown and with every other ``atexit`` handler still to run, everything alive
    is frozen out of the collector (``gc.freeze``): the teardown then takes a fraction of a
    second. Objects the collector would have freed are left to the operating system; triton's
    extension reports them as "leaked" on stderr, so the log handlers are flushed first and
    the process's stdout and stderr then point at /dev/null for the rest of its teardown.
    (Not ``os._exit``: an ``atexit`` handler does not know the exit code the process is
    leaving with.) The ``seedx`` program ends its own server
    processes with ``seedx.lifetime.exit_now``.
    """
    atexit.register(_quiet_teardown)


def _quiet_teardown() -> None:
    gc.freeze()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
