"""Real ``redis-server`` processes for the tests and the chaos suite: one server, or a
Sentinel-managed set (master, replica, three sentinels) that a scenario may fail over.

Debian's ``redis-server`` is used as it is shipped (sentinel mode is ``redis-server FILE
--sentinel``; there is no ``redis-sentinel`` binary). Every server gets its own folder (config,
log, data) and a free loopback port; a port taken between choosing and binding it is retried
with another. Servers are stopped by their own process, never by name.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
READY = "Ready to accept connections"
SENTINEL_READY = "+monitor master"


class RedisServerError(RuntimeError):
    """A redis-server did not start (its log is in the message)."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` (or sentinel) started from ``config(port)``, the lines of its config
    file for the port chosen; ready once its log says so."""

    def __init__(
        self,
        folder: Path,
        config: Callable[[int], Sequence[str]],
        *,
        sentinel: bool = False,
        start_timeout_s: float = 20.0,
    ) -> None:
        if REDIS_SERVER is None:
            raise RedisServerError("redis-server is not installed")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.log_path = folder / "redis.log"
        conf = folder / ("sentinel.conf" if sentinel else "redis.conf")
        ready = SENTINEL_READY if sentinel else READY
        log = ""
        for _ in range(3):  # a free port can be taken before the server binds it: try another
            self.port = free_port()
            lines = ["bind 127.0.0.1", f"dir {folder}", *config(self.port)]
            conf.write_text("\n".join(lines) + "\n")
            self._log = self.log_path.open("w")
            args = [REDIS_SERVER, str(conf), *(["--sentinel"] if sentinel else [])]
            self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + start_timeout_s
            while ready not in self.log_path.read_text():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            else:
                return
            log = self.log_path.read_text()
            self.close()
        raise RedisServerError(f"redis-server did not start in {folder}: {log}")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server dies without a word to its clients or replicas."""
        if self.alive:
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def plain_config(*extra: str) -> Callable[[int], list[str]]:
    """A data server without persistence on the chosen port, plus ``extra`` lines."""
    return lambda port: [f"port {port}", 'save ""', "appendonly no", *extra]


class SentinelSet:
    """A master, one replica and three sentinels watching them as master set ``name``.

    Sentinels decide quickly (``down_after_ms``; quorum 2 of 3) so a test sees a whole failover
    in a few seconds. ``auth`` lines (``user ...``, e.g. the ACL user of docs/deploy.md, and the
    admin ``default`` user) go into both data servers; the replica and the sentinels log in as
    ``admin`` (``default`` with ``admin_password``).
    """

    def __init__(
        self,
        folder: Path,
        *,
        name: str = "seedx",
        auth: Sequence[str] = (),
        admin_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.name = name
        self.admin_password = admin_password
        login = [f"masterauth {admin_password}", "masteruser default"] if admin_password else []
        self.servers: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []
        try:
            master = RedisServer(folder / "master", plain_config(*auth, *login))
            self.servers.append(master)
            self.servers.append(
                RedisServer(
                    folder / "replica",
                    plain_config(*auth, *login, f"replicaof 127.0.0.1 {master.port}"),
                )
            )
            watch = [
                f"sentinel monitor {name} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]
            if admin_password:
                watch += [
                    f"sentinel auth-user {name} default",
                    f"sentinel auth-pass {name} {admin_password}",
                ]
            for index in range(3):
                self.sentinels.append(
                    RedisServer(
                        folder / f"sentinel-{index}",
                        lambda port: [f"port {port}", *watch],
                        sentinel=True,
                    )
                )
        except BaseException:
            self.close()
            raise

    def url(self, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        """The ``redis+sentinel://`` URL of the set (credentials: the master's)."""
        credentials = f"{user or ''}:{password}@" if password else ""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{credentials}{hosts}/{self.name}/{db}"

    def master_port(self) -> int | None:
        """The master's port as the first answering sentinel sees it (None: none knows one)."""
        import redis

        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            client = redis.Redis(port=sentinel.port, socket_timeout=1.0, decode_responses=True)
            try:
                address = client.sentinel_get_master_addr_by_name(self.name)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        return None

    def master(self) -> RedisServer:
        """The server that is master now (per the sentinels)."""
        port = self.master_port()
        for server in self.servers:
            if server.port == port and server.alive:
                return server
        raise RuntimeError(f"no live server is master of {self.name} (sentinels say {port})")

    def wait_in_sync(self, timeout_s: float = 20.0) -> None:
        """Until the replica has caught up and every sentinel knows it (a failover needs it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._sees_replica(sentinel) for sentinel in self.sentinels):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the sentinels of {self.name} never saw the replica in sync")

    def _sees_replica(self, sentinel: RedisServer) -> bool:
        import redis as redis_py

        client = redis_py.Redis(port=sentinel.port, socket_timeout=1.0, decode_responses=True)
        try:
            replicas = client.sentinel_slaves(self.name)
            others = client.sentinel_sentinels(self.name)
        except redis_py.RedisError:
            return False
        finally:
            client.close()
        synced = [r for r in replicas if "s_down" not in r.get("flags", "")]
        return bool(synced) and len(others) >= 2

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()
