"""Real ``redis-server`` processes for the tests and the chaos suite: one server, or a
Sentinel-managed set (master, replica, three sentinels) that a scenario may fail over.

Debian's ``redis-server`` is used as it is shipped (sentinel mode is ``redis-server FILE
--sentinel``; there is no ``redis-sentinel`` binary). Every server gets its own folder (config,
log, data) and a free loopback port; a port taken between choosing and binding it is retried
with another. Servers are stopped by their own process, never by name.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server")
ROOT = Path(__file__).resolve().parents[2]
READY = "Ready to accept connections"
SENTINEL_READY = "+monitor master"


def documented_acl(password: str) -> str:
    """The ``user seedx ...`` line of docs/deploy.md (the ACL user the stack needs), with
    ``password``: tests and the chaos suite run as exactly what the docs tell operators."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("user seedx on >PASSWORD ")]
    if len(lines) != 1:
        raise RuntimeError("docs/deploy.md must hold one `user seedx on >PASSWORD ...` line")
    return lines[0].replace(">PASSWORD", f">{password}")


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
        self._conf = conf
        self._sentinel = sentinel
        self._ready = SENTINEL_READY if sentinel else READY
        self._start_timeout_s = start_timeout_s
        log = ""
        for _ in range(3):  # a free port can be taken before the server binds it: try another
            self.port = free_port()
            lines = ["bind 127.0.0.1", f"dir {folder}", *config(self.port)]
            conf.write_text("\n".join(lines) + "\n")
            if self._start():
                return
            log = self.log_path.read_text()
            self.close()
        raise RedisServerError(f"redis-server did not start in {folder}: {log}")

    def _start(self) -> bool:
        assert REDIS_SERVER is not None
        self._log = self.log_path.open("a")
        offset = self.log_path.stat().st_size
        args = [REDIS_SERVER, str(self._conf), *(["--sentinel"] if self._sentinel else [])]
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._start_timeout_s
        while self._ready not in self.log_path.read_text()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def restart(self) -> None:
        """Start a stopped server again on its port, with its config file as it is now
        (Sentinel rewrites it: a former master comes back as a replica)."""
        self.close()
        if not self._start():
            raise RedisServerError(f"redis-server did not restart: {self.log_path.read_text()}")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server dies without a word to its clients or replicas."""
        if self.alive:
            self.process.kill()
        self.process.wait()
        self._log.close()

    def close(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def plain_config(*extra: str, tls: Tls | None = None) -> Callable[[int], list[str]]:
    """A data server without persistence on the chosen port (TLS only, with ``tls``), plus
    ``extra`` lines."""
    return lambda port: [*listen(port, tls), 'save ""', "appendonly no", *extra]


def listen(port: int, tls: Tls | None) -> list[str]:
    """The lines that make a server (or sentinel) listen on ``port``: plain, or TLS only with
    ``tls``'s certificate (replication and sentinel links over TLS too)."""
    if tls is None:
        return [f"port {port}"]
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {tls.cert}",
        f"tls-key-file {tls.key}",
        f"tls-ca-cert-file {tls.ca}",
        "tls-auth-clients no",
        "tls-replication yes",
    ]


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
        tls: Tls | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.admin_password = admin_password
        login = [f"masterauth {admin_password}", "masteruser default"] if admin_password else []
        self.servers: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []
        try:
            master = RedisServer(folder / "master", plain_config(*auth, *login, tls=tls))
            self.servers.append(master)
            self.servers.append(
                RedisServer(
                    folder / "replica",
                    plain_config(*auth, *login, f"replicaof 127.0.0.1 {master.port}", tls=tls),
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
                        lambda port: [*listen(port, tls), *watch],
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
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}+sentinel://{credentials}{hosts}/{self.name}/{db}"

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py arguments to reach one of the set's servers directly (TLS with its CA)."""
        if self.tls is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}

    def admin_url(self) -> str:
        """A plain URL of the current master as the admin (for tests and observation)."""
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://default:{self.admin_password}@127.0.0.1:{self.master().port}/0"

    def _sentinel_client(self, sentinel: RedisServer) -> Any:
        import redis

        return redis.Redis(
            port=sentinel.port, socket_timeout=1.0, decode_responses=True, **self.client_kwargs()
        )

    def master_port(self) -> int | None:
        """The master's port as the first answering sentinel sees it (None: none knows one)."""
        import redis

        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            client = self._sentinel_client(sentinel)
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

    def kill_master(self, lose_writes_s: float = 0.0) -> int:
        """SIGKILL the current master; returns its port.

        ``lose_writes_s`` > 0: first cut the replica's link (``CLIENT KILL TYPE replica``; the
        replica reconnects only at its next once-a-second replication tick), then kill the
        master that long later: the writes of that window never reach the replica that is
        promoted, as asynchronous replication loses them to a master's crash in production
        (on one machine, a replica that stays connected has every write in its socket
        buffer, so a plain kill loses nothing)."""
        master = self.master()
        if lose_writes_s > 0:
            import redis

            client = redis.Redis(
                port=master.port,
                username="default" if self.admin_password else None,
                password=self.admin_password,
                socket_timeout=1.0,
                **self.client_kwargs(),
            )
            try:
                client.client_kill_filter(_type="replica")
            finally:
                client.close()
            time.sleep(lose_writes_s)
        master.kill()
        return master.port

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

        client = self._sentinel_client(sentinel)
        try:
            replicas = client.sentinel_slaves(self.name)
            others = client.sentinel_sentinels(self.name)
        except redis_py.RedisError:
            return False
        finally:
            client.close()
        synced = [r for r in replicas if "s_down" not in r.get("flags", "")]
        return bool(synced) and len(others) >= 2

    def revive(self) -> None:
        """Start the killed servers again (a former master rejoins as a replica) and wait until
        the set can fail over once more."""
        for server in self.servers:
            if not server.alive:
                server.restart()
        self.wait_in_sync()

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()


@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server's certificate


def _write_key(path: Path, key: object) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _ca(name: str) -> tuple[object, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_tls(folder: Path) -> Tls:
    """A CA, a server certificate for 127.0.0.1 and localhost signed by it, and a stranger CA
    (for a wrong-CA check); made on the spot, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("seedx test CA")
    _, other_cert = _ca("another CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)  # type: ignore[attr-defined]
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    tls = Tls(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other.pem")
    pem = serialization.Encoding.PEM
    tls.ca.write_bytes(ca_cert.public_bytes(pem))  # type: ignore[attr-defined]
    tls.other_ca.write_bytes(other_cert.public_bytes(pem))  # type: ignore[attr-defined]
    tls.cert.write_bytes(cert.public_bytes(pem))
    _write_key(tls.key, key)
    return tls


class Backbone:
    """The chaos stack's Redis when it runs the backbone scenarios: a :class:`SentinelSet` over
    TLS (a CA of its own) whose clients log in as the ACL user of docs/deploy.md, as a
    production deployment with an external Sentinel-managed Redis would. Same face as the
    stack's private Valkey (``url``, ``start``, ``close``) plus what the scenarios need."""

    PASSWORD = "seedx-Backbone-Pa55"
    ADMIN_PASSWORD = "admin-Backbone-Pa55"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tls = make_tls(folder / "tls")
        self._set: SentinelSet | None = None

    @property
    def servers(self) -> SentinelSet:
        if self._set is None:
            raise RuntimeError("the backbone is not started")
        return self._set

    def start(self) -> None:
        self._set = SentinelSet(
            self.folder / "set",
            auth=[
                f"user default on >{self.ADMIN_PASSWORD} ~* &* +@all",
                documented_acl(self.PASSWORD),
            ],
            admin_password=self.ADMIN_PASSWORD,
            tls=self.tls,
        )
        self._set.wait_in_sync()

    @property
    def url(self) -> str:
        """What every process of the stack is given: rediss+sentinel:// as user ``seedx``."""
        return self.servers.url("seedx", self.PASSWORD)

    def url_with(self, password: str) -> str:
        return self.servers.url("seedx", password)

    def settings_env(self) -> dict[str, str]:
        """RedisSettings fields (by env name) every process needs beside the URL."""
        return {"SSL_CA_CERTS": str(self.tls.ca)}

    def admin_url(self) -> str:
        return self.servers.admin_url()

    def client_kwargs(self) -> dict[str, Any]:
        """For ``redis.Redis.from_url(admin_url(), ...)`` (the URL's scheme says TLS)."""
        return {"ssl_ca_certs": str(self.tls.ca)}

    def kill_master(self, lose_writes_s: float = 0.0) -> int:
        """SIGKILL the current master (see :meth:`SentinelSet.kill_master`)."""
        return self.servers.kill_master(lose_writes_s)

    def revive(self) -> None:
        self.servers.revive()

    def close(self) -> None:
        if self._set is not None:
            self._set.close()
