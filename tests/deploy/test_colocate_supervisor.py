"""files/colocate.py, the PID 1 of a colocated GPU group's container, with stand-in workers.

A stand-in worker answers /healthz on its port (after an optional delay, like a model load),
records what happened to it in a file, and exits on SIGTERM (or ignores it, or dies on its
own). Checked: children start one after another, each once the previous one is healthy; SIGTERM
reaches every child and the supervisor exits 0 once they drained; a child that exits stops the
others and its code becomes the container's; a child that ignores SIGTERM is killed after the
grace, with what it started; the probe answers for every port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import CHART

SCRIPT = CHART / "files" / "colocate.py"

STAND_IN = r"""
import http.server, os, signal, subprocess, sys, threading, time

name, log = os.environ["FAKE_NAME"], os.environ["FAKE_LOG"]

def note(event):
    with open(log, "a") as f:
        f.write(f"{time.monotonic():.3f} {name} {event}\n")

note("started")
if os.environ.get("FAKE_GRANDCHILD"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_GRANDCHILD"], "w") as f:
        f.write(str(child.pid))

def on_term(signum, frame):
    note("SIGTERM")
    if os.environ.get("FAKE_IGNORE_TERM"):
        return
    time.sleep(0.3)  # a drain
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
time.sleep(float(os.environ.get("FAKE_LOAD_S", "0")))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(os.environ["FAKE_PORT"])), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
note("healthy")
print(f"{name} serving", flush=True)
die_after = os.environ.get("FAKE_DIE_AFTER_S")
if die_after:
    time.sleep(float(die_after))
    note("dies")
    os._exit(int(os.environ.get("FAKE_DIE_CODE", "3")))
while True:
    time.sleep(1)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_spec(name: str, port: int, stand_in: Path, log: Path, **env: str) -> str:
    env = {"FAKE_NAME": name, "FAKE_PORT": str(port), "FAKE_LOG": str(log), **env}
    return json.dumps({"name": name, "port": port, "argv": [sys.executable, str(stand_in)],
                       "env": env})  # fmt: skip


def start(children: list[str], grace_s: float = 5.0) -> subprocess.Popen[str]:
    args = [sys.executable, str(SCRIPT), "run", "--grace-s", str(grace_s)]
    for child in children:
        args += ["--child", child]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def probe(*ports: int) -> int:
    command = [sys.executable, str(SCRIPT), "probe", *map(str, ports), "--timeout-s", "1"]
    return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode


def events(log: Path) -> list[tuple[float, str, str]]:
    out = []
    for line in log.read_text().splitlines():
        at, name, event = line.split(" ", 2)
        out.append((float(at), name, event))
    return out


def stop(group: subprocess.Popen[str]) -> None:
    """Kills the group if a test left it running, and reads its pipe to the end: a pipe left
    open is closed by the garbage collector in whichever test runs next, whose warnings are
    errors (this once failed an unrelated chart test)."""
    group.kill()
    group.communicate()


def wait_until(predicate: object, timeout_s: float = 60.0) -> None:
    """Waits for a condition; the timeout only guards against a hang (two interpreters start
    before a stand-in answers, which took over 20 s on a loaded 2-core CI machine)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    return path


def test_children_start_in_order_and_drain_on_sigterm(stand_in: Path, tmp_path: Path) -> None:
    log, ports = tmp_path / "events", (free_port(), free_port())
    group = start([
        child_spec("llm", ports[0], stand_in, log, FAKE_LOAD_S="1.5"),
        child_spec("first_stage", ports[1], stand_in, log),
    ])  # fmt: skip
    try:
        assert probe(*ports) == 1  # nothing answers yet
        wait_until(lambda: probe(*ports) == 0)
        seen = events(log)
        llm_healthy = next(at for at, n, e in seen if (n, e) == ("llm", "healthy"))
        second = next(at for at, n, e in seen if (n, e) == ("first_stage", "started"))
        assert second >= llm_healthy  # the de-tokenizer loads after the LLM took its share
        group.send_signal(signal.SIGTERM)
        out, _ = group.communicate(timeout=20)
    finally:
        stop(group)
    assert group.returncode == 0, out
    terminated = {n for _, n, e in events(log) if e == "SIGTERM"}
    assert terminated == {"llm", "first_stage"}
    assert "llm         | llm serving" in out  # output lines carry the process's name
    assert "first_stage | first_stage serving" in out


def test_a_child_that_exits_stops_the_group_with_its_code(stand_in: Path, tmp_path: Path) -> None:
    log, ports = tmp_path / "events", (free_port(), free_port())
    pid_file = tmp_path / "grandchild"
    group = start([
        child_spec("llm", ports[0], stand_in, log, FAKE_DIE_AFTER_S="4", FAKE_DIE_CODE="3",
                   FAKE_GRANDCHILD=str(pid_file)),
        child_spec("first_stage", ports[1], stand_in, log),
    ])  # fmt: skip
    try:
        out, _ = group.communicate(timeout=30)
    finally:
        stop(group)
    assert group.returncode == 3, out  # the LLM worker's "engine died": the kubelet restarts
    assert "llm exited with code 3" in out
    assert ("first_stage", "SIGTERM") in {(n, e) for _, n, e in events(log)}
    grandchild = int(pid_file.read_text())  # what the dead child started (vLLM's engine core)
    wait_until(lambda: not _alive(grandchild), timeout_s=10)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(
    stand_in: Path, tmp_path: Path
) -> None:
    log, port = tmp_path / "events", free_port()
    group = start([child_spec("llm", port, stand_in, log, FAKE_IGNORE_TERM="1")], grace_s=1.0)
    try:
        wait_until(lambda: probe(port) == 0)
        began = time.monotonic()
        group.send_signal(signal.SIGTERM)
        out, _ = group.communicate(timeout=20)
    finally:
        stop(group)
    assert time.monotonic() - began < 6
    assert "SIGKILL" in out
    assert group.returncode == 0  # stopped as asked; the kill is in the log


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_sigterm_during_start_up_starts_nothing_more(stand_in: Path, tmp_path: Path) -> None:
    log, ports = tmp_path / "events", (free_port(), free_port())
    group = start([
        child_spec("llm", ports[0], stand_in, log, FAKE_LOAD_S="5"),
        child_spec("first_stage", ports[1], stand_in, log),
    ])  # fmt: skip
    try:
        wait_until(lambda: log.exists() and "llm started" in log.read_text())
        group.send_signal(signal.SIGTERM)  # a rollout while the LLM is still loading
        out, _ = group.communicate(timeout=20)
    finally:
        stop(group)
    assert group.returncode == 0, out
    assert {n for _, n, _ in events(log)} == {"llm"}  # the de-tokenizer was never started
