"""Two ``seedx serve`` on one host (issue 22 items 1 and 3), as two users of one machine run them.

A second stack starts beside the shared one on another ``--port``: both become ready and both
answer (their workers' metrics ports are their own, bound on loopback, as ``--host`` is). Then
the second is SIGKILLed, as a process manager that loses patience does: none of its processes
(gateway, workers, vLLM's engine processes, the embedded Valkey) may outlive it, and the first
stack goes on answering.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.serve.conftest import ROOT, STARTUP_S, Served, free_port

METRICS = re.compile(r"(\S+) http://([\d.]+):(\d+)/metrics")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening_hosts(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (IPv4, from /proc/net/tcp)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            hosts.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return hosts


def ready_metrics(log: str) -> dict[str, tuple[str, int]]:
    line = next(line for line in log.splitlines() if line.startswith("seedx is ready at"))
    found = {name: (host, int(port)) for name, host, port in METRICS.findall(line)}
    found.pop("gateway", None)  # the gateway serves /metrics on its own port
    return found


def chat(base_url: str) -> int:
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={
            "model": "seed-x-i",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}],
        },
        timeout=120,
    )
    return response.status_code


def test_a_second_stack_runs_beside_the_first_and_dies_whole_with_sigkill(
    served: Served, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "second-serve.log"
    env = {**os.environ, "SEEDX_CACHE_DIR": str(ROOT / ".cache" / "seedx")}
    with log.open("wb") as sink:
        second = subprocess.Popen(
            [sys.executable, "-m", "seedx.cli", "serve", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + STARTUP_S
        while "seedx is ready at" not in log.read_text(errors="replace"):
            text = log.read_text(errors="replace")[-4000:]
            assert second.poll() is None, f"the second seedx serve exited:\n{text}"
            assert time.monotonic() < deadline, f"the second stack is not ready:\n{text}"
            time.sleep(1)

        first, other = (
            ready_metrics(served.log.read_text(errors="replace")),
            ready_metrics(log.read_text(errors="replace")),
        )
        assert set(first) == set(other) != set()
        assert not {port for _, port in first.values()} & {port for _, port in other.values()}
        for name, (host, metrics_port) in other.items():
            assert host == "127.0.0.1"
            assert listening_hosts(metrics_port) == {"127.0.0.1"}, name  # not 0.0.0.0
            assert httpx.get(f"http://{host}:{metrics_port}/metrics", timeout=10).status_code == 200

        assert chat(f"http://127.0.0.1:{port}") == 200
        assert chat(served.base_url) == 200

        below = descendants(second.pid)
        names = {Path(f"/proc/{pid}/exe").resolve().name for pid in below if alive(pid)}
        assert any("valkey" in name for name in names), names  # the embedded server is ours
        assert len(below) >= 8  # Valkey, gateway, 4 workers, 2 engine cores and more
        second.kill()  # SIGKILL: serve can stop nothing itself
        second.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in below if alive(pid)}
        assert left == {}, left

        assert chat(served.base_url) == 200  # the first stack never noticed
        assert httpx.get(f"{served.base_url}/readyz", timeout=10).status_code == 200
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
