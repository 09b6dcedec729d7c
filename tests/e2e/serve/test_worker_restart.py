"""A worker killed under ``seedx serve`` is restarted by the supervisor, and the stack answers
again with nobody doing anything (issue 7). Runs after the other tests of this folder (the file
sorts after them), which need every worker up; only ``test_zz_stop`` comes later.

The diffusion worker of ``first_stage`` is the one killed (SIGKILL, as the OOM killer would): it
is on the path of image generation and restarts in seconds; the LLM workers go through the same
supervisor code but take a minute to restart on a CPU.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai

from tests.e2e.serve.conftest import Served


def children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


def worker_pid(served: Served, *words: str) -> int | None:
    for pid, cmdline in children(served.process.pid).items():
        if all(word in cmdline for word in words):
            return pid
    return None


def test_a_killed_worker_is_restarted_and_the_stack_answers(served: Served) -> None:
    client = openai.OpenAI(
        base_url=f"{served.base_url}/v1", api_key="demo", timeout=120, max_retries=0
    )
    words = ("worker", "diffusion", "first_stage")
    victim = worker_pid(served, *words)
    assert victim is not None, children(served.process.pid)
    log_at = len(served.log.read_text(errors="replace"))

    os.kill(victim, signal.SIGKILL)
    served.wait_log(r"diffusion:first_stage\s+exited with code -9; restarting", 30, log_at)

    deadline = time.monotonic() + 180
    while (new := worker_pid(served, *words)) in (None, victim):
        assert time.monotonic() < deadline, "the worker was not started again"
        time.sleep(0.5)
    # the request may be sent before the new worker is up: its job waits in the stream for it
    result = client.images.generate(prompt="a red cube", size="64x64", extra_body={"steps": 2})
    assert result.data is not None
    assert result.data[0].b64_json
    assert worker_pid(served, *words) == new
    served.wait_log(r"diffusion:first_stage\s+\|", 5, log_at)  # its log is prefixed again
