"""Render the chart's tiny demo and run what it renders: the gateway and worker containers'
commands and environment become local processes against a real Redis, the init containers
(`seedx make-tiny`, `seedx convert`) write the checkpoint, then one chat call and one image call
go through the gateway with the API key from the chart's Secret. The chart's wiring is proven,
not only its YAML.

What is emulated, and only that: a Secret volume is written to a temporary folder and its mount
path in the environment is pointed there; `$(VAR)` references in commands are expanded as the
kubelet does; `seedx` is this interpreter's `python -m seedx.cli`. The model volume is real: the
chart is rendered with `models.mountPath` set to a temporary folder. The probes the chart declares
(httpGet / tcpSocket) are evaluated against the running processes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import CHART, RELEASE, Render, find
from tests.deploy.contract import container_env, secret_values
from tests.redis_server import redis_url_for_tests

pytestmark = pytest.mark.e2e

API_KEY = "sk-render-and-run-0123"
P = f"{RELEASE}-seedx"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """SEEDX_TEST_REDIS_URL (CI's Redis), else an embedded Valkey for this module."""
    with redis_url_for_tests() as url:
        yield url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """The kubelet's $(VAR) expansion, then `seedx` -> this interpreter."""
    out = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]
    if out[0] == "seedx":
        out = [sys.executable, "-m", "seedx.cli", *out[1:]]
    return out


def mount_secrets(
    pod: dict[str, Any], container: dict[str, Any], secrets: dict[tuple[str, str], str], root: Path
) -> dict[str, str]:
    """Writes the container's Secret volumes under ``root``: mount path -> local folder."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mapping: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" not in volume:
            continue
        folder = root / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for item in volume["secret"]["items"]:
            (folder / item["path"]).write_text(
                secrets[(volume["secret"]["secretName"], item["key"])]
            )
        mapping[mount["mountPath"]] = str(folder)
    return mapping


class Process:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        base = {k: v for k, v in os.environ.items() if not k.startswith("SEEDX_")}
        with log.open("wb") as sink:
            self.popen = subprocess.Popen(
                command, env={**base, **env}, stdout=sink, stderr=subprocess.STDOUT
            )

    def tail(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def probe_ok(container: dict[str, Any], probe: dict[str, Any]) -> bool:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if "httpGet" in probe:
        port = probe["httpGet"]["port"]
        url = f"http://127.0.0.1:{ports.get(port, port)}{probe['httpGet']['path']}"
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    port = probe["tcpSocket"]["port"]
    try:
        socket.create_connection(("127.0.0.1", ports.get(port, port)), timeout=2).close()
        return True
    except OSError:
        return False


def run_init_containers(pods: list[dict[str, Any]], secrets: dict[tuple[str, str], str]) -> None:
    """Each pod's init containers in order (the pods' emptyDirs are one folder here: once each)."""
    done: set[str] = set()
    for pod in pods:
        for init in pod.get("initContainers", []):
            command = expand(init["command"], container_env(init, secrets))
            if " ".join(command) in done:
                continue
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=300, check=False
            )
            assert result.returncode == 0, f"{init['name']}: {result.stderr[-2000:]}"
            done.add(" ".join(command))


def test_rendered_tiny_demo_serves_chat_and_images(
    render: Render, redis_url: str, tmp_path: Path
) -> None:
    gateway_port = free_port()
    docs = render(
        [CHART / "ci" / "tiny-demo-values.yaml"],
        [
            f"models.mountPath={tmp_path / 'models'}",
            f"gateway.port={gateway_port}",
            f"llm.metricsPort={free_port()}",
            f"diffusion.metricsPort={free_port()}",
            "redis.bundled=false",
            f"redis.external.url={redis_url}",
            f"apiKeys.keys={{{API_KEY}}}",
            "gateway.settings.allow_unauthenticated=false",
        ],
    )
    secrets = secret_values(docs)
    names = [f"{P}-llm-seed-x-i", f"{P}-diffusion-first-stage", f"{P}-gateway"]
    pods = {n: find(docs, "Deployment", n)["spec"]["template"]["spec"] for n in names}

    import redis as redis_sync

    redis_sync.Redis.from_url(redis_url).flushdb()

    run_init_containers([pods[n] for n in names], secrets)

    processes: list[Process] = []
    containers: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            pod = pods[name]
            container = pod["containers"][0]
            containers[name] = container
            env = container_env(container, secrets)
            for mount_path, folder in mount_secrets(
                pod, container, secrets, tmp_path / name
            ).items():
                env = {k: v.replace(mount_path, folder) for k, v in env.items()}
            processes.append(
                Process(name, expand(container["command"], env), env, tmp_path / f"{name}.log")
            )

        base = f"http://127.0.0.1:{gateway_port}"
        deadline = time.monotonic() + 240
        while True:  # the gateway's readiness probe: Redis + a live worker of every stage
            for process in processes:
                assert process.popen.poll() is None, process.tail()
            ready = all(probe_ok(containers[n], containers[n]["readinessProbe"]) for n in names)
            if ready:
                break
            assert time.monotonic() < deadline, "\n".join(p.tail() for p in processes)
            time.sleep(1)
        for name in names:
            assert probe_ok(containers[name], containers[name]["livenessProbe"]), name

        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=base, headers=headers, timeout=180) as client:
            assert (
                client.get(
                    "/v1/models", headers={"Authorization": "Bearer wrong-key-123"}
                ).status_code
                == 401
            )
            chat = client.post(
                "/v1/chat/completions",
                json={"model": "seed-x-i", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "Describe a red cube."}]},
            )  # fmt: skip
            assert chat.status_code == 200, chat.text + "\n".join(p.tail() for p in processes)
            assert chat.json()["choices"][0]["message"]["role"] == "assistant"
            image = client.post(
                "/v1/images/generations",
                json={"model": "seed-x-i", "prompt": "a red cube", "size": "64x64",
                      "steps": 2, "response_format": "b64_json"},
            )  # fmt: skip
            assert image.status_code == 200, image.text + "\n".join(p.tail() for p in processes)
            assert image.json()["data"][0]["b64_json"]
            metrics = client.get("/metrics")  # public_metrics, as the ServiceMonitor scrapes it
            assert metrics.status_code == 200
            assert "seedx_gateway_requests_total" in metrics.text
    finally:
        for process in reversed(processes):
            process.stop()
