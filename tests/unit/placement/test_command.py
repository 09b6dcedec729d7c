"""``seedx plan``: output and exit codes, its defaults, --json, --model, detection, and that the
planner imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import seedx.placement.inventory
from seedx.cli import build_parser, main
from seedx.placement.planner import Plan

FORBIDDEN = ("torch", "vllm", "diffusers", "transformers", "numpy", "safetensors")


def test_the_planner_imports_no_model_stack() -> None:
    code = (
        "import sys, seedx.placement, seedx.placement.command, seedx.placement.refusal, "
        "seedx.placement.render, seedx.cli; "
        "from seedx.cli import main; main(['plan', '--gpus', '1x80GB', '--llm', 'seed-x-i']); "
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]; "
        "print('BAD', ','.join(sorted(bad)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().endswith("BAD")


def test_a_plan_exits_0_with_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "1x80GB", "--llm", "seed-x-i"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("sizes: released SEED-X-17B; capacity 32")
    assert "llm:seed-x-i           0      1  float16  30.34 GB" in out
    assert "diffusion:first_stage  0      -  float16   9.47 GB" in out
    assert "  0  80GB  80.00 GB  76.53 GB" in out
    assert "    SEEDX_LLM_TENSOR_PARALLEL_SIZE=1" in out
    assert "    SEEDX_DIFFUSION_MAX_BATCH=4" in out


def test_no_env(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "1x80GB", "--llm", "seed-x-i", "--no-env"]) == 0
    assert "SEEDX_LLM_KV_CACHE_BYTES" not in capsys.readouterr().out


def test_a_refusal_exits_1_with_what_would_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "1x141GB"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "seedx plan: nothing fits: llm:seed-x-i, llm:seed-x-edit, diffusion:first_stage, "
        "diffusion:second_stage on 1x141GB"
    )
    assert "  --capacity 17" in captured.err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--gpus", "2x24"], "--gpus '2x24': expected [COUNT x] SIZE UNIT"),
        (["--gpus", "1x80GB:a100", "--fp8"], "none of these GPUs has fp8"),
        (["--gpus", "1x80GB", "--llm", "seed-x-2"], "not in released SEED-X-17B: seed-x-2"),
        (["--gpus", "1x80GB", "--capacity", "0"], "invalid capacity"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *argv]) == 2
    assert words in capsys.readouterr().err


def test_without_gpus_it_detects_and_says_when_there_are_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(seedx.placement.inventory, "detect", list)
    assert main(["plan"]) == 2
    assert (
        "no GPU found on this host: say which to plan for, e.g. --gpus" in capsys.readouterr().err
    )
    found = seedx.placement.inventory.parse_gpus("2x80GB:h100")
    monkeypatch.setattr(seedx.placement.inventory, "detect", lambda: found)
    assert main(["plan"]) == 0
    assert "H100 80GB (fp8)" in capsys.readouterr().out


def test_defaults_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "2x80GB", "--json"]) == 0
    plan = Plan.from_json(capsys.readouterr().out)
    assert [p.name for p in plan.processes] == [
        "llm:seed-x-i", "llm:seed-x-edit", "diffusion:first_stage", "diffusion:second_stage",
    ]  # fmt: skip
    assert main(["plan", "--gpus", "8x80GB", "--llm", "seed-x", "--json"]) == 0
    plan = Plan.from_json(capsys.readouterr().out)
    assert [p.name for p in plan.processes] == ["llm:seed-x", "diffusion:first_stage"]
    argv = ["plan", "--gpus", "2x24GB", "--llm", "seed-x-i", "--detokenizer", "none"]
    assert main([*argv, "--capacity", "4", "--json"]) == 0
    (llm,) = Plan.from_json(capsys.readouterr().out).processes
    assert llm.tensor_parallel_size == 2


def test_workload_flags_reach_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--gpus", "1x48GB:l40s", "--llm", "seed-x-i", "--fp8", "--json",
            "--capacity", "8", "--max-batch", "2", "--decode-batch", "1", "--size", "768x1344",
            "--max-model-len", "4096", "--no-vit"]  # fmt: skip
    assert main(argv) == 0
    plan = Plan.from_json(capsys.readouterr().out)
    llm, diffusion = plan.processes
    assert llm.quantization == "fp8"
    assert llm.env["SEEDX_LLM_MAX_MODEL_LEN"] == "4096"
    assert diffusion.env["SEEDX_DIFFUSION_MAX_BATCH_PIXELS"] == str(2 * 768 * 1344)
    assert diffusion.env["SEEDX_DIFFUSION_DECODE_BATCH"] == "1"
    assert diffusion.env["SEEDX_DIFFUSION_LOAD_VIT"] == "false"


def test_a_serving_tree(serving_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--gpus", "2x48GB", "--model", str(serving_tree), "--json"]) == 0
    plan = Plan.from_json(capsys.readouterr().out)
    assert plan.source == str(serving_tree)
    assert [p.name for p in plan.processes] == [
        "llm:seed-x", "llm:seed-x-edit", "llm:seed-x-i",
        "diffusion:first_stage", "diffusion:second_stage",
    ]  # fmt: skip


def test_help_says_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["plan", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        "GB = 10^9 bytes",
        "Default LLMs: seed-x-i and seed-x-edit (what seedx serve's demo serves)",
        "plus first_stage for /v1/images/variations",
        "Exit status: 0 with a plan; 1 when nothing fits",
        "--fp8, --no-fp8",
    ):
        assert words in text, words
