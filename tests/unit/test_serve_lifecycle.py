"""How ``seedx serve`` starts, fails and dies (issue 22 items 1-3), with real processes.

The supervisor with plain Python children; the gateway and ``seedx serve`` on a taken port as a
user runs them; children and the embedded Valkey after their parent was SIGKILLed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedx.serve import metrics_ports
from seedx.supervisor import ChildSpec, Supervisor
from workers.metrics_http import start_metrics_server
from workers.startup import EXIT_STARTUP, StartupError, listening_socket

ROOT = Path(__file__).resolve().parents[2]


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process (this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


async def test_a_child_failing_before_ready_stops_the_stack_with_its_last_line() -> None:
    lines: list[str] = []
    specs = [
        ChildSpec("broken", _py("import sys; print('error: no model at /nowhere'); sys.exit(2)")),
        ChildSpec("steady", _py("import time; print('up', flush=True); time.sleep(60)")),
    ]
    supervisor = Supervisor(specs, grace_s=5, backoff_start_s=0.05, out=lines.append)

    async def never_ready() -> bool:
        await asyncio.sleep(60)
        return True

    started = time.monotonic()
    assert await supervisor.run(never_ready) == 1
    assert time.monotonic() - started < 10
    assert lines[-1] == (
        "seedx serve: broken could not start (exit code 2): error: no model at /nowhere; stopping"
    )
    assert supervisor.children[0].restarts == 0  # said once, not restarted
    steady = supervisor.children[1].process
    assert steady is not None
    assert steady.returncode is not None


async def test_after_ready_a_crash_is_restarted_but_a_startup_error_is_not() -> None:
    lines: list[str] = []
    crashes = ChildSpec("crashy", _py("print('up', flush=True); raise SystemExit(3)"))
    supervisor = Supervisor([crashes], grace_s=5, backoff_start_s=0.05, out=lines.append)

    async def ready_now() -> bool:
        return True

    async def stop_after_two_restarts() -> None:
        while supervisor.children[0].restarts < 2:
            await asyncio.sleep(0.05)
        supervisor.stop()

    code, _ = await asyncio.gather(supervisor.run(ready_now), stop_after_two_restarts())
    assert code == 0
    assert supervisor.failure is None

    lines.clear()
    config = ChildSpec("config", _py(f"print('port taken'); raise SystemExit({EXIT_STARTUP})"))
    supervisor = Supervisor([config], grace_s=5, backoff_start_s=0.05, out=lines.append)

    async def ready_later() -> bool:
        await asyncio.sleep(0.5)  # the child exits after the stack was ready
        return True

    assert await supervisor.run(ready_later) == 1
    assert supervisor.children[0].restarts == 0
    assert "config could not start (exit code 78): port taken" in lines[-1]


def test_a_taken_gateway_port_exits_78_with_one_clear_line(taken_port: int) -> None:
    """What a user sees: within seconds, one line, no traceback, no restart loop."""
    for argv in (["gateway", "--port", str(taken_port)], ["serve", "--port", str(taken_port)]):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "seedx.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "SEEDX_GATEWAY_ALLOW_UNAUTHENTICATED": "true"},
        )
        elapsed = time.monotonic() - started
        assert result.returncode == EXIT_STARTUP, result.stderr
        assert elapsed < 10
        assert f"port {taken_port} on 127.0.0.1 is already in use" in result.stderr
        assert "Traceback" not in result.stderr, result.stderr


def test_a_taken_metrics_port_is_a_startup_error(taken_port: int) -> None:
    with pytest.raises(StartupError, match=f"port {taken_port} on 127.0.0.1 is already in use"):
        start_metrics_server(taken_port, "127.0.0.1", lambda: True)


def test_listening_socket_names_the_port_and_the_hint(taken_port: int) -> None:
    with pytest.raises(StartupError) as caught:
        listening_socket("127.0.0.1", taken_port, "choose another with --port")
    assert str(caught.value) == (
        f"port {taken_port} on 127.0.0.1 is already in use (choose another with --port)"
    )


def test_worker_metrics_ports_are_free_distinct_or_counted_from_the_base() -> None:
    args = argparse.Namespace(host="127.0.0.1", metrics_port=0)
    ports = metrics_ports(args, 4)
    assert len(set(ports)) == 4
    for port in ports:  # free now, on the gateway's host
        listening_socket("127.0.0.1", port).close()
    assert metrics_ports(argparse.Namespace(host="127.0.0.1", metrics_port=9200), 3) == [
        9200,
        9201,
        9202,
    ]


def _start_parent(
    script: str, tmp_path: Path, count: int
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Runs ``script`` (``PIDS`` in it: a file path) as a parent process that appends the pids
    it wants checked to that file, one per line; returns once ``count`` pids are there."""
    pids = tmp_path / "pids"
    program = tmp_path / "parent.py"
    program.write_text(script.replace("PIDS", repr(str(pids))))
    parent = subprocess.Popen([sys.executable, str(program)], cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    found: list[int] = []
    while time.monotonic() < deadline and len(found) < count:
        time.sleep(0.05)
        if pids.exists():
            found = [int(line) for line in pids.read_text().splitlines() if line.strip()]
    if len(found) < count:
        parent.kill()
        parent.wait()
        pytest.fail("the parent did not start its children")
    return parent, found


def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    """SIGKILL gives the supervisor no chance to stop anything: the kernel does it."""
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(
        "import os, time\n"
        f"with open({str(tmp_path / 'pids')!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        "time.sleep(120)\n"
    )
    parent, pids = _start_parent(
        "import asyncio, sys\n"
        "from seedx.supervisor import ChildSpec, Supervisor\n"
        f"child = [sys.executable, {str(sleeper)!r}]\n"
        "asyncio.run(Supervisor([ChildSpec('a', child), ChildSpec('b', child)]).run())\n",
        tmp_path,
        count=2,
    )
    assert all(_alive(pid) for pid in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert all(_wait_gone(pid, 10) for pid in pids), [pid for pid in pids if _alive(pid)]


def test_the_embedded_valkey_dies_with_a_sigkilled_serve(tmp_path: Path) -> None:
    parent, (valkey,) = _start_parent(
        "import time\n"
        "from seedx.embedded_redis import EmbeddedValkey\n"
        "valkey = EmbeddedValkey()\n"
        "valkey.start()\n"
        "with open(PIDS, 'w') as f:\n"
        "    f.write(f'{valkey._process.pid}\\n')\n"
        "time.sleep(120)\n",
        tmp_path,
        count=1,
    )
    assert _alive(valkey)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _wait_gone(valkey, 10)


def test_the_embedded_valkey_answers_and_stops() -> None:
    import redis

    from seedx.embedded_redis import EmbeddedValkey

    valkey = EmbeddedValkey()
    valkey.start()
    try:
        client = redis.Redis.from_url(valkey.url)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}  # keeps nothing on disk
        client.close()
    finally:
        valkey.stop()
    assert valkey._process is None


def test_redis_url_check_follows_sentinel_and_refuses_silence(tmp_path: Path) -> None:
    """``seedx serve --redis-url`` is checked through the stack's own client: a
    ``redis+sentinel://`` URL reaches its master (it was refused as an unknown scheme), and a
    URL nobody answers at stops serve with a line naming it, before any worker starts."""
    import shutil

    from seedx.chaos.redis_servers import SentinelSet, free_port
    from seedx.serve import check_redis

    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    servers = SentinelSet(tmp_path / "redis")
    try:
        servers.wait_in_sync()
        check_redis(servers.url())
    finally:
        servers.close()
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StartupError, match=r"no Redis answers at redis://127\.0\.0\.1"):
        check_redis(nobody)
