"""Ctrl-C of ``seedx serve`` stops every process in order and cleanly (issue 16 item 4: no
``resource_tracker ... leaked shared_memory`` warnings). Runs after every other test of this
folder (the file sorts last), because it stops the stack they share."""

from __future__ import annotations

import signal

from tests.e2e.serve.conftest import Served
from tests.e2e.serve.test_worker_restart import children


def test_ctrl_c_stops_the_stack_without_leaks(served: Served) -> None:
    log_at = len(served.log.read_text(errors="replace"))
    pids = list(children(served.process.pid))
    assert pids
    served.process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to seedx serve
    assert served.process.wait(timeout=60) == 0
    stopping = served.log.read_text(errors="replace")[log_at:]
    assert "leaked" not in stopping, stopping[-4000:]
    assert "Traceback" not in stopping, stopping[-4000:]
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], stopping[-4000:]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
