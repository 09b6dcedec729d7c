"""``seedx serve --device cuda`` places its workers with the planner (issue 23 item 2).

No GPU here: ``torch.cuda`` is faked to report one 80 GB H100, the way the planner's detection
reads a real one, and the workers' spawn environment must be the plan's: their GPUs, tensor
parallel size, KV cache and batch budgets. A pinned ``--plan`` wins; a plan that cannot be made
stops ``seedx serve`` before anything starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from seedx.placement.planner import Plan
from seedx.serve import add_parser, build_specs, placement, read_manifest
from workers.startup import StartupError

GIB = 1 << 30


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.fixture
def one_h100(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda as it answers on a host with one 80 GB H100 (and no NVML bindings)."""
    import torch

    monkeypatch.setitem(sys.modules, "pynvml", None)  # the planner then asks torch
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * GIB, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda ordinal: props)


def test_cuda_workers_start_with_the_planned_environment(
    one_h100: None, serving_tree: Path
) -> None:
    args = serve_args("--model", str(serving_tree), "--device", "cuda")
    manifest = read_manifest(serving_tree)
    plan = placement(serving_tree, manifest, args, demo=False)
    assert plan is not None
    assert [gpu.total_bytes for gpu in plan.gpus] == [80 * GIB]
    specs = build_specs(serving_tree, manifest, "redis://x/0", args, demo=False, plan=plan)
    workers = [spec for spec in specs if spec.name != "gateway"]
    assert {spec.name for spec in workers} == {process.name for process in plan.processes}
    for spec in workers:
        planned = plan.process(spec.name)
        for name, value in planned.env.items():
            assert spec.env[name] == value, (spec.name, name)
        assert spec.env["CUDA_VISIBLE_DEVICES"] == "0"
    llm = next(spec for spec in workers if spec.name.startswith("llm:"))
    assert int(llm.env["SEEDX_LLM_KV_CACHE_BYTES"]) == plan.process(llm.name).kv_cache_bytes
    assert llm.env["SEEDX_LLM_TENSOR_PARALLEL_SIZE"] == "1"
    # every budget of the plan fits the one GPU it names
    assert plan.used_bytes(0) <= plan.gpus[0].usable_bytes


def test_a_pinned_plan_is_used_as_written(
    one_h100: None, serving_tree: Path, tmp_path: Path
) -> None:
    args = serve_args("--model", str(serving_tree), "--device", "cuda")
    manifest = read_manifest(serving_tree)
    made = placement(serving_tree, manifest, args, demo=False)
    assert made is not None
    pinned = tmp_path / "plan.json"
    pinned.write_text(made.to_json())
    again = placement(
        serving_tree, manifest, serve_args(*sys_args(args), "--plan", str(pinned)), demo=False
    )
    assert again == Plan.from_json(made.to_json())

    partial = Plan.from_json(made.to_json())
    partial = Plan(
        partial.gpus, partial.processes[1:], partial.workload, partial.options, partial.source
    )
    pinned.write_text(partial.to_json())
    with pytest.raises(StartupError, match="no placement for"):
        placement(serving_tree, manifest, serve_args(*sys_args(args), "--plan", str(pinned)), False)


def test_no_gpu_or_no_room_stops_serve_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, serving_tree: Path
) -> None:
    from seedx.placement import inventory
    from seedx.placement.inventory import Gpu

    args = serve_args("--model", str(serving_tree), "--device", "cuda")
    manifest = read_manifest(serving_tree)
    monkeypatch.setattr(inventory, "detect", lambda: [])
    with pytest.raises(StartupError, match="no GPU found"):
        placement(serving_tree, manifest, args, demo=False)
    monkeypatch.setattr(inventory, "detect", lambda: [Gpu(0, "tiny", 2 * GIB)])
    with pytest.raises(StartupError, match="do not fit this host's GPUs"):
        placement(serving_tree, manifest, args, demo=False)


def test_cpu_and_the_demo_are_not_planned(serving_tree: Path) -> None:
    manifest = read_manifest(serving_tree)
    cpu = serve_args("--model", str(serving_tree), "--device", "cpu")
    assert placement(serving_tree, manifest, cpu, demo=False) is None
    assert placement(serving_tree, manifest, serve_args(), demo=True) is None


def sys_args(args: argparse.Namespace) -> list[str]:
    return ["--model", str(args.model), "--device", args.device]
