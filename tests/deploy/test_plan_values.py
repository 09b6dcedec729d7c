"""``seedx plan --helm`` values rendered by the chart (issue 23 item 2).

For the inventories of docs/deploy.md's "Placement" (and a few plans the planner does not make
but the chart must take: a de-tokenizer on a TP group's second GPU, de-tokenizers sharing a GPU
without an LLM), the values ``seedx plan --helm`` writes are rendered with the chart's defaults
and the demo's API key: helm checks them against values.schema.json, every process's rendered
environment carries its plan env (KV bytes, TP size, quantization, max batch, the rest of its
settings) and builds its settings class, no CUDA variable is rendered, and each pod requests the
plan's GPUs. The refusal of a plan the chart cannot express is tested in
tests/unit/placement/test_helm_values.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from seedx.cli import main
from seedx.placement.helm import layout, render_values
from seedx.placement.planner import Plan, ProcessPlan
from tests.deploy.conftest import RELEASE, TEST_KEY, documents, helm_template
from tests.deploy.contract import build_settings, container_env, secret_values
from tests.unit.placement.test_helm_values import moved

P = f"{RELEASE}-seedx"
LEAN = ["--capacity", "8", "--max-batch", "1", "--decode-batch", "1"]
# name -> seedx plan arguments (docs/deploy.md's inventories, each one that plans)
PLANS: dict[str, list[str]] = {
    "1x80GB-seed-x-i": ["--gpus", "1x80GB", "--llm", "seed-x-i"],
    "2x80GB-seed-x-i-edit": ["--gpus", "2x80GB"],
    # everything on 1x141GB plans only lean with fp8, with three LLMs on GPU 0: refused (unit
    # test); SEED-X-I alone plans
    "1x141GB-seed-x-i": ["--gpus", "1x141GB", "--llm", "seed-x-i"],
    "4x24GB-tp": ["--gpus", "4x24GB:fp8", "--llm", "seed-x-i", "--fp8", *LEAN],
    "8x80GB-everything": [
        "--gpus",
        "8x80GB",
        *("--llm", "seed-x", "--llm", "seed-x-i"),
        *("--llm", "seed-x-edit"),
    ],
    "2x80GB-no-detokenizer": ["--gpus", "2x80GB", "--detokenizer", "none"],
}
LAYOUTS = {
    "1x80GB-seed-x-i": "colocated",
    "2x80GB-seed-x-i-edit": "colocated",
    "1x141GB-seed-x-i": "colocated",
    "4x24GB-tp": "separate",
    "8x80GB-everything": "separate",
    "2x80GB-no-detokenizer": "colocated",
    "tp-detokenizer-on-gpu-1": "colocated",
    "detokenizers-share-a-gpu": "colocated",
}
CUDA = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")


def _plan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Plan:
    assert main(["plan", *argv, "--json"]) == 0
    return Plan.from_json(capsys.readouterr().out)


def _plans(name: str, capsys: pytest.CaptureFixture[str]) -> Plan:
    if name in PLANS:
        return _plan(PLANS[name], capsys)
    if name == "tp-detokenizer-on-gpu-1":
        return moved(_plan(PLANS["4x24GB-tp"], capsys), "diffusion:first_stage", (1,))
    base = _plan(PLANS["8x80GB-everything"], capsys)
    return moved(moved(base, "diffusion:first_stage", (5,)), "diffusion:second_stage", (5,))


def _values(p: Plan, tmp_path: Path) -> Path:
    out = tmp_path / "plan-values.yaml"
    out.write_text(render_values(p))  # what seedx plan --helm writes
    return out


def _pods(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Worker Deployment name -> (its container, its processes: name, env)."""
    secrets = secret_values(docs)
    out: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for doc in docs:
        if doc["kind"] != "Deployment" or doc["metadata"]["name"] == f"{P}-gateway":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        shared = container_env(container, secrets)
        if container["name"] == "workers":
            args = container["args"]
            children = [json.loads(args[i + 1]) for i, a in enumerate(args) if a == "--child"]
            processes = [{"stage": c["argv"][2], "env": {**shared, **c["env"]}} for c in children]
        else:
            processes = [{"stage": container["name"], "env": shared}]
        out[doc["metadata"]["name"]] = (container, processes)
    return out


def _find(
    pods: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]], process: ProcessPlan
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(Deployment, container, env) of a plan's process in the render."""
    for name, (container, processes) in pods.items():
        for rendered in processes:
            env = rendered["env"]
            if rendered["stage"] != process.stage:
                continue
            if process.stage == "llm" and env["SEEDX_LLM_MODEL"].endswith(f"/{process.model}"):
                return name, container, env
            if env.get("SEEDX_DIFFUSION_DETOKENIZER") == process.model:
                return name, container, env
    raise AssertionError(f"{process.name} is not rendered")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_plan_values_render_and_carry_the_plan(
    name: str, helm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _plans(name, capsys)
    assert layout(p) == LAYOUTS[name]
    # helm validates the merged values against values.schema.json before rendering
    values = _values(p, tmp_path)
    docs = documents(helm_template(helm, [values], [f"apiKeys.keys={{{TEST_KEY}}}"]).stdout)
    pods = _pods(docs)
    found = {process.name: _find(pods, process) for process in p.processes}
    # the plan's GPUs of each worker Deployment: a process's own, or its group's
    pod_gpus: dict[str, set[int]] = {}
    for process in p.processes:
        pod_gpus.setdefault(found[process.name][0], set()).update(process.gpus)
    assert len(pods) == len(pod_gpus)  # no worker Deployment the plan does not have
    if LAYOUTS[name] == "separate":
        assert len(pods) == len(p.processes)
    for deployment, gpus in pod_gpus.items():
        resources = pods[deployment][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == len(gpus), deployment
        assert "nvidia.com/gpu" not in resources.get("requests", {})  # limits are requests
    assert sum(len(g) for g in pod_gpus.values()) == len({i for q in p.processes for i in q.gpus})
    for process in p.processes:
        deployment, _, env = found[process.name]
        for key, value in process.env.items():
            if key not in CUDA:
                assert env.get(key) == value, (process.name, key)
        assert not any(key in env for key in CUDA)
        if process.stage == "llm":
            settings: Any = build_settings("llm", env)
            assert settings.kv_cache_bytes == process.kv_cache_bytes
            assert settings.tensor_parallel_size == process.tensor_parallel_size
            assert settings.quantization == process.quantization
            assert len(pod_gpus[deployment]) == process.tensor_parallel_size
        else:
            settings = build_settings("diffusion", env)
            assert settings.max_batch == p.workload.max_batch
            device = sorted(pod_gpus[deployment]).index(process.gpus[0])
            assert settings.device == (f"cuda:{device}" if device else "auto"), process.name


def test_the_command_writes_what_renders(helm: str, tmp_path: Path) -> None:
    """``seedx plan --helm FILE`` itself, then ``helm template -f FILE``."""
    out = tmp_path / "plan-values.yaml"
    seedx = str(Path(sys.executable).parent / "seedx")
    argv = [seedx, "plan", "--gpus", "2x80GB", "--no-env", "--helm", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sizes: released SEED-X-17B")
    docs = documents(helm_template(helm, [out], [f"apiKeys.keys={{{TEST_KEY}}}"]).stdout)
    deployments = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Deployment")
    assert deployments == [f"{P}-gateway", f"{P}-group-g0", f"{P}-group-g1"]
