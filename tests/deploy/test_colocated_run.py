"""Render the tiny demo in the colocated layout and run what it renders: one GPU group's
container (files/colocate.py starting `seedx worker llm` and then `seedx worker diffusion` from
their --child specs) and the gateway become local processes against a real Redis; the group's
exec probes are run as the kubelet would; a chat call and an image call go through the gateway;
SIGTERM to the group's PID 1 stops both workers and it exits 0.

Emulated as in test_render_and_run.py, plus: the ConfigMap volume holding colocate.py is written
to a temporary folder and its mount path pointed there; `python` is this interpreter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import CHART, Render, find
from tests.deploy.contract import container_env, secret_values
from tests.deploy.test_render_and_run import (
    P,
    Process,
    expand,
    free_port,
    mount_secrets,
    probe_ok,
    redis_url,  # noqa: F401 (the module's Redis fixture)
    run_init_containers,
)

pytestmark = pytest.mark.e2e

API_KEY = "sk-colocated-run-0123"
MOUNT = "/etc/seedx/colocate"


def mount_config_maps(
    docs: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any], root: Path
) -> dict[str, str]:
    """Writes the container's ConfigMap volumes under ``root``: mount path -> local folder."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mapping: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        data = find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
        folder = root / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (folder / key).write_text(value)
        mapping[mount["mountPath"]] = str(folder)
    return mapping


def localize(args: list[str], mapping: dict[str, str]) -> list[str]:
    """Mount paths -> local folders; `python` -> this interpreter."""
    out = []
    for arg in args:
        for path, folder in mapping.items():
            arg = arg.replace(path, folder)
        out.append(arg)
    if out and out[0] == "python":
        out[0] = sys.executable
    return out


def exec_probe_ok(probe: dict[str, Any], mapping: dict[str, str]) -> bool:
    command = localize(probe["exec"]["command"], mapping)
    return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0


def test_rendered_colocated_tiny_demo_serves_chat_and_images(
    render: Render,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway_port = free_port()
    llm_port, diffusion_port = free_port(), free_port()
    docs = render(
        [CHART / "ci" / "tiny-demo-values.yaml"],
        [
            f"models.mountPath={tmp_path / 'models'}",
            f"gateway.port={gateway_port}",
            f"llm.metricsPort={llm_port}",
            f"diffusion.metricsPort={diffusion_port}",
            "redis.bundled=false",
            f"redis.external.url={redis_url}",
            f"apiKeys.keys={{{API_KEY}}}",
            "gateway.settings.allow_unauthenticated=false",
            "placement.layout=colocated",
            "placement.groups[0].name=tiny",
            "placement.groups[0].gpus=1",  # ignored with gpu.enabled=false
            "placement.groups[0].llm.model=seed-x-i",
            "placement.groups[0].llm.kvCacheBytes=268435456",
            "placement.groups[0].diffusion[0].detokenizer=first_stage",
            "placement.groups[0].diffusion[0].maxBatch=2",
        ],
    )
    secrets = secret_values(docs)
    group = find(docs, "Deployment", f"{P}-group-tiny")["spec"]["template"]["spec"]
    gateway = find(docs, "Deployment", f"{P}-gateway")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(group)

    import redis as redis_sync

    redis_sync.Redis.from_url(redis_url).flushdb()
    run_init_containers([group], secrets)

    workers = group["containers"][0]
    mapping = mount_config_maps(docs, group, workers, tmp_path / "group")
    bin_dir = str(Path(sys.executable).parent)  # `seedx` of this environment, as in the image
    env = container_env(workers, secrets)
    env["PATH"] = bin_dir + ":" + os.environ.get("PATH", "")
    processes: list[Process] = []
    try:
        supervisor = Process(
            "group",
            localize([*workers["command"], *workers["args"]], mapping),
            env,
            tmp_path / "group.log",
        )
        processes.append(supervisor)
        gw = gateway["containers"][0]
        gw_env = container_env(gw, secrets)
        for mount_path, folder in mount_secrets(gateway, gw, secrets, tmp_path / "gw").items():
            gw_env = {k: v.replace(mount_path, folder) for k, v in gw_env.items()}
        processes.append(
            Process("gateway", expand(gw["command"], gw_env), gw_env, tmp_path / "gw.log")
        )

        deadline = time.monotonic() + 300
        while not (
            exec_probe_ok(workers["startupProbe"], mapping) and probe_ok(gw, gw["readinessProbe"])
        ):
            for process in processes:
                assert process.popen.poll() is None, process.tail()
            assert time.monotonic() < deadline, "\n".join(p.tail() for p in processes)
            time.sleep(1)
        assert exec_probe_ok(workers["livenessProbe"], mapping)
        assert exec_probe_ok(workers["readinessProbe"], mapping)
        log = (tmp_path / "group.log").read_text()
        assert log.index("started llm") < log.index("started first_stage")  # LLM first

        headers = {"Authorization": f"Bearer {API_KEY}"}
        base = f"http://127.0.0.1:{gateway_port}"
        with httpx.Client(base_url=base, headers=headers, timeout=180) as client:
            chat = client.post(
                "/v1/chat/completions",
                json={"model": "seed-x-i", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "Describe a red cube."}]},
            )  # fmt: skip
            assert chat.status_code == 200, chat.text + "\n".join(p.tail() for p in processes)
            image = client.post(
                "/v1/images/generations",
                json={"model": "seed-x-i", "prompt": "a red cube", "size": "64x64",
                      "steps": 2, "response_format": "b64_json"},
            )  # fmt: skip
            assert image.status_code == 200, image.text + "\n".join(p.tail() for p in processes)
            assert image.json()["data"][0]["b64_json"]

        # The kubelet's SIGTERM reaches PID 1, which stops both workers and exits 0.
        supervisor.popen.send_signal(signal.SIGTERM)
        assert supervisor.popen.wait(timeout=90) == 0, supervisor.tail()
        log = (tmp_path / "group.log").read_text()
        assert "llm exited with code 0" in log, supervisor.tail()
        assert "first_stage exited with code 0" in log, supervisor.tail()
    finally:
        for process in reversed(processes):
            process.stop()
