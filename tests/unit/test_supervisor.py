"""The ``seedx serve`` supervisor with real child processes (plain Python one-liners)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from seedx.chaos.stack import alive
from seedx.supervisor import ChildSpec, Supervisor


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def _run_until(s: Supervisor, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async def stopper() -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        s.stop()

    await asyncio.gather(s.run(), stopper())


async def test_output_is_prefixed_and_a_crashed_child_restarts() -> None:
    lines: list[str] = []
    specs = [
        ChildSpec("crashy", _py("print('up', flush=True); raise SystemExit(3)")),
        ChildSpec("steady", _py("import time; print('hello', flush=True); time.sleep(60)")),
    ]
    s = Supervisor(specs, grace_s=5, backoff_start_s=0.05, out=lines.append)
    await _run_until(s, lambda: sum(line == "crashy | up" for line in lines) >= 2)
    assert "steady | hello" in lines
    assert any("crashy exited with code 3; restarting" in line for line in lines)
    assert s.children[0].restarts >= 1
    assert s.children[1].restarts == 0


async def test_stop_terminates_children_and_escalates_to_kill(tmp_path: Path) -> None:
    marker = tmp_path / "term"
    graceful = _py(
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).write_text('x'),"
        " sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(60)"
    )
    stubborn = _py(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    lines: list[str] = []
    s = Supervisor(
        [ChildSpec("a", graceful), ChildSpec("b", stubborn)], grace_s=1, out=lines.append
    )
    started = asyncio.get_running_loop().time()
    await _run_until(s, lambda: sum(line.endswith("| ready") for line in lines) == 2)
    assert marker.read_text() == "x"  # SIGTERM reached the graceful child
    for child in s.children:
        assert child.process is not None
        assert child.process.returncode is not None  # nobody left behind
    assert asyncio.get_running_loop().time() - started < 10


async def test_what_a_dead_child_started_is_stopped_before_the_restart(tmp_path: Path) -> None:
    """A worker that dies leaves its own children (vLLM's engine core) in its process group."""
    pids = tmp_path / "pids"
    leaves_a_grandchild = _py(
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'a').write(f'{{g.pid}}\\n')\n"
        "print('up', flush=True)\nraise SystemExit(9)"
    )
    lines: list[str] = []
    s = Supervisor([ChildSpec("w", leaves_a_grandchild)], backoff_start_s=0.05, out=lines.append)
    await _run_until(s, lambda: sum(line == "w | up" for line in lines) >= 2)
    first = int(pids.read_text().split()[0])
    await asyncio.sleep(0.2)
    assert not alive([first])


def test_serve_makes_the_gateway_ready_only_when_each_model_it_starts_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``seedx serve --llm seed-x-i``: /readyz waits for that LLM and both de-tokenizers (and
    not for seed-x-edit, which it does not start); an explicit setting wins."""
    from seedx.serve import build_specs

    monkeypatch.delenv("SEEDX_GATEWAY_MODELS__READINESS", raising=False)
    manifest = {
        "models": {name: {"path": name} for name in ("seed-x-i", "seed-x-edit")},
        "detokenizers": {"first_stage": {}, "second_stage": {}},
    }
    args = argparse.Namespace(
        llm=["seed-x-i"],
        host="127.0.0.1",
        port=8000,
        api_key=None,
        device="cpu",
        metrics_port=0,
    )
    specs = build_specs(tmp_path, manifest, "redis://x/0", args, demo=False)
    gateway = next(spec for spec in specs if spec.name == "gateway")
    readiness = json.loads(gateway.env["SEEDX_GATEWAY_MODELS__READINESS"])
    assert readiness == ["seed-x-i", "first_stage", "second_stage"]

    monkeypatch.setenv("SEEDX_GATEWAY_MODELS__READINESS", "[]")
    specs = build_specs(tmp_path, manifest, "redis://x/0", args, demo=False)
    gateway = next(spec for spec in specs if spec.name == "gateway")
    assert "SEEDX_GATEWAY_MODELS__READINESS" not in gateway.env
