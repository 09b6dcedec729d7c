"""Ctrl-C of ``seedx serve`` stops every process in order, cleanly and within 10 s (issue 16
item 4: no ``resource_tracker ... leaked shared_memory`` warnings; issue 22 item 3: none of vLLM's
"force killing" or "still running after grace period" either, which came with 7.5-15.5 s stops).
Runs after every other test of this folder (the file sorts last), because it stops the stack
they share."""

from __future__ import annotations

import signal
import time

from tests.e2e.serve.conftest import Served
from tests.e2e.serve.test_worker_restart import children


def test_ctrl_c_stops_the_stack_without_leaks(served: Served) -> None:
    log_at = len(served.log.read_text(errors="replace"))
    pids = list(children(served.process.pid))
    assert pids
    started = time.monotonic()
    served.process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to seedx serve
    assert served.process.wait(timeout=60) == 0
    took = time.monotonic() - started
    stopping = served.log.read_text(errors="replace")[log_at:]
    for sign in ("leaked", "Traceback", "force killing", "still running", "WARNING", "ERROR"):
        assert sign not in stopping, stopping[-4000:]
    assert took <= 10, f"Ctrl-C took {took:.1f} s:\n{stopping[-4000:]}"
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], stopping[-4000:]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
