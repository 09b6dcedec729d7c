"""``seedx plan --helm``: a plan as the chart's values (seedx/placement/helm.py).

The layout each plan gets, the mapping of its env to values (named keys, settings, dropped CUDA
variables, ``device`` for a de-tokenizer on a group's other GPU), the YAML text, the command,
and the refusal of what the chart cannot express. tests/deploy/test_plan_values.py renders these
values with helm.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from seedx.cli import main
from seedx.placement.helm import ChartRefused, _yaml, helm_values, layout, render_values
from seedx.placement.inventory import parse_gpus
from seedx.placement.planner import Options, Plan, Workload, plan
from seedx.placement.sizes import released_sizes

LEAN = Workload(capacity=8, max_batch=1, decode_batch=1)
FORBIDDEN = ("torch", "vllm", "diffusers", "transformers", "numpy", "safetensors")


def make_plan(
    gpus: str,
    llms: tuple[str, ...],
    stages: tuple[str, ...],
    workload: Workload | None = None,
    fp8: bool = False,
) -> Plan:
    work = workload or Workload()
    return plan(parse_gpus(gpus), released_sizes(), llms, stages, work, Options(fp8=fp8))


def moved(base: Plan, name: str, gpus: tuple[int, ...]) -> Plan:
    """``base`` with process ``name`` put on ``gpus`` (a plan the planner would not make)."""
    processes = tuple(
        dataclasses.replace(p, gpus=gpus) if p.name == name else p for p in base.processes
    )
    return dataclasses.replace(base, processes=processes)


def tp_plan() -> Plan:
    """SEED-X-I at TP 2 (fp8) on two 24 GB GPUs, first_stage on a third: the docs' 4x24GB."""
    return make_plan("4x24GB:fp8", ("seed-x-i",), ("first_stage",), LEAN, fp8=True)


# --- the layout -------------------------------------------------------------------------------
def test_one_gpu_for_an_llm_and_its_detokenizer_is_one_colocated_group() -> None:
    p = make_plan("1x80GB", ("seed-x-i",), ("first_stage",))
    llm, diffusion = p.processes
    assert helm_values(p) == {
        "placement": {
            "layout": "colocated",
            "groups": [
                {
                    "name": "g0",
                    "gpus": 1,
                    "replicas": 1,
                    "llm": {
                        "model": "seed-x-i",
                        "tensorParallelSize": 1,
                        "kvCacheBytes": llm.kv_cache_bytes,
                        "settings": {"capacity": 32, "dtype": "float16", "max_model_len": 2048},
                    },
                    "diffusion": [
                        {
                            "detokenizer": "first_stage",
                            "maxBatch": 4,
                            "settings": {
                                "decode_batch": 4,
                                "dtype": "float16",
                                "max_batch_pixels": 4 * 1024 * 1024,
                            },
                        }
                    ],
                }
            ],
        }
    }
    assert llm.kv_cache_bytes == int(llm.env["SEEDX_LLM_KV_CACHE_BYTES"])
    assert diffusion.gpus == (0,)


def test_two_gpus_shared_by_two_llms_and_two_detokenizers_are_two_groups() -> None:
    p = make_plan("2x80GB", ("seed-x-i", "seed-x-edit"), ("first_stage", "second_stage"))
    groups = helm_values(p)["placement"]["groups"]
    assert [(g["name"], g["gpus"], g["llm"]["model"]) for g in groups] == [
        ("g0", 1, "seed-x-i"),
        ("g1", 1, "seed-x-edit"),
    ]
    # The plan puts second_stage beside SEED-X-I on GPU 0 and first_stage beside Edit on GPU 1.
    assert [[d["detokenizer"] for d in g["diffusion"]] for g in groups] == [
        ["second_stage"],
        ["first_stage"],
    ]
    kv = {g["llm"]["model"]: g["llm"]["kvCacheBytes"] for g in groups}
    assert kv == {
        "seed-x-i": p.process("llm:seed-x-i").kv_cache_bytes,
        "seed-x-edit": p.process("llm:seed-x-edit").kv_cache_bytes,
    }


def test_no_shared_gpu_is_the_separate_layout_with_tp_as_the_gpu_count() -> None:
    p = tp_plan()
    assert [pp.gpus for pp in p.processes] == [(0, 1), (2,)]
    llm = p.process("llm:seed-x-i")
    assert helm_values(p) == {
        "placement": {"layout": "separate"},
        "llm": {
            "models": [
                {
                    "name": "seed-x-i",
                    "replicas": 1,
                    "gpus": 2,
                    "settings": {
                        "capacity": 8,
                        "dtype": "float16",
                        "kv_cache_bytes": llm.kv_cache_bytes,
                        "max_model_len": 2048,
                        "quantization": "fp8",
                        "tensor_parallel_size": 2,
                    },
                }
            ]
        },
        "diffusion": {
            "detokenizers": [
                {
                    "name": "first_stage",
                    "replicas": 1,
                    "gpus": 1,
                    "settings": {
                        "decode_batch": 1,
                        "dtype": "float16",
                        "max_batch": 1,
                        "max_batch_pixels": 1024 * 1024,
                    },
                }
            ]
        },
    }


def test_eight_gpus_for_everything_are_five_separate_deployments() -> None:
    p = make_plan("8x80GB", ("seed-x", "seed-x-i", "seed-x-edit"), ("first_stage", "second_stage"))
    values = helm_values(p)
    assert values["placement"] == {"layout": "separate"}
    assert [(m["name"], m["gpus"]) for m in values["llm"]["models"]] == [
        ("seed-x", 1), ("seed-x-i", 1), ("seed-x-edit", 1),
    ]  # fmt: skip
    assert [d["name"] for d in values["diffusion"]["detokenizers"]] == [
        "first_stage",
        "second_stage",
    ]


def test_a_plan_without_detokenizers_is_colocated() -> None:
    """The separate layout's lists cannot be empty (the chart's default first_stage would stay),
    so LLMs alone are groups of one LLM each."""
    p = make_plan("2x80GB", ("seed-x-i", "seed-x-edit"), ())
    assert layout(p) == "colocated"
    groups = helm_values(p)["placement"]["groups"]
    assert [(g["name"], g["gpus"], g["llm"]["model"], "diffusion" in g) for g in groups] == [
        ("g0", 1, "seed-x-i", False),
        ("g1", 1, "seed-x-edit", False),
    ]


def test_a_detokenizer_on_a_groups_other_gpu_gets_its_device() -> None:
    p = moved(tp_plan(), "diffusion:first_stage", (1,))
    (group,) = helm_values(p)["placement"]["groups"]
    assert group["gpus"] == 2
    assert group["llm"]["tensorParallelSize"] == 2
    assert group["llm"]["quantization"] == "fp8"
    (detok,) = group["diffusion"]
    assert detok["settings"]["device"] == "cuda:1"
    on_first = helm_values(moved(tp_plan(), "diffusion:first_stage", (0,)))
    assert "device" not in on_first["placement"]["groups"][0]["diffusion"][0]["settings"]


def test_detokenizers_sharing_a_gpu_without_an_llm_are_a_group_without_one() -> None:
    base = make_plan("8x80GB", ("seed-x-edit",), ("first_stage", "second_stage"))
    p = moved(moved(base, "diffusion:first_stage", (5,)), "diffusion:second_stage", (5,))
    groups = helm_values(p)["placement"]["groups"]
    assert [g["name"] for g in groups] == ["g0", "g1"]
    assert "diffusion" not in groups[0]
    assert "llm" not in groups[1]
    assert groups[1]["gpus"] == 1
    assert [d["detokenizer"] for d in groups[1]["diffusion"]] == ["first_stage", "second_stage"]


def test_no_cuda_variables_and_every_other_variable_is_a_value() -> None:
    p = make_plan(
        "1x48GB:l40s", ("seed-x-i",), ("first_stage",),
        Workload(capacity=8, max_batch=2, decode_batch=1, load_vit=False), fp8=True,
    )  # fmt: skip
    text = render_values(p)
    assert "CUDA" not in text
    (group,) = helm_values(p)["placement"]["groups"]
    assert group["llm"]["quantization"] == "fp8"
    assert group["diffusion"][0]["settings"]["load_vit"] is False
    assert group["diffusion"][0]["maxBatch"] == 2
    named = {"SEEDX_LLM_TENSOR_PARALLEL_SIZE", "SEEDX_LLM_KV_CACHE_BYTES",
             "SEEDX_LLM_QUANTIZATION", "SEEDX_DIFFUSION_MAX_BATCH"}  # fmt: skip
    for process, values in zip(p.processes, [group["llm"], group["diffusion"][0]], strict=True):
        prefix = f"SEEDX_{process.stage.upper()}_"
        fields = {k[len(prefix) :].lower() for k in process.env if k.startswith(prefix)}
        fields -= {k[len(prefix) :].lower() for k in named}
        assert set(values["settings"]) == fields


# --- refusals -----------------------------------------------------------------------------------
def test_llms_sharing_a_gpu_are_refused() -> None:
    """1x141GB runs everything only lean with fp8, all on GPU 0: a group runs one LLM."""
    p = make_plan(
        "1x141GB:fp8", ("seed-x", "seed-x-i", "seed-x-edit"), ("first_stage", "second_stage"),
        LEAN, fp8=True,
    )  # fmt: skip
    with pytest.raises(ChartRefused) as refused:
        helm_values(p)
    message = str(refused.value)
    assert message.startswith(
        "the chart cannot express this plan: llm:seed-x, llm:seed-x-i, llm:seed-x-edit share "
        "GPU 0 (with diffusion:first_stage, diffusion:second_stage), and a GPU group of the "
        "chart (placement.groups[]) runs one LLM worker"
    )
    assert "fewer LLMs (--llm)" in message


def test_overlapping_tensor_parallel_llms_are_refused() -> None:
    base = make_plan("8x48GB", ("seed-x-i", "seed-x-edit"), ("first_stage", "second_stage"))
    assert base.process("llm:seed-x-edit").gpus == (2, 3)
    with pytest.raises(ChartRefused, match="llm:seed-x-i, llm:seed-x-edit share GPU 0, 1, 2"):
        helm_values(moved(base, "llm:seed-x-edit", (1, 2)))


def test_a_name_the_chart_does_not_take_is_refused() -> None:
    base = make_plan("2x80GB", ("seed-x-i",), ("first_stage",))
    processes = tuple(
        dataclasses.replace(p, model="Seed_X") if p.stage == "llm" else p for p in base.processes
    )
    with pytest.raises(ChartRefused, match="name 'Seed_X' is not a name the chart takes"):
        helm_values(dataclasses.replace(base, processes=processes))


# --- the YAML text --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p",
    [
        make_plan("1x80GB", ("seed-x-i",), ("first_stage",)),
        make_plan("2x80GB", ("seed-x-i", "seed-x-edit"), ("first_stage", "second_stage")),
        tp_plan(),
        moved(tp_plan(), "diffusion:first_stage", (1,)),
    ],
    ids=["1x80GB", "2x80GB", "4x24GB-tp", "tp-shared"],
)
def test_the_text_is_yaml_of_the_values_with_the_plan_as_a_comment(p: Plan) -> None:
    text = render_values(p)
    assert yaml.safe_load(text) == helm_values(p)
    comment = [line for line in text.splitlines() if line.startswith("#")]
    assert any(line.startswith("# llm:seed-x-i ") for line in comment)
    assert "helm install ... -f your-values.yaml -f <this>" in text


def test_scalars_that_yaml_would_misread_are_quoted() -> None:
    tricky: dict[str, Any] = {
        "a": ["yes", "no", "on", "null", "true", "1e3", "0x10", "12:30", "", "a b", "cuda:1"],
        "b": {"c": [], "d": {}, "e": None, "f": True, "g": 1.5, "h": [{"i": 1}, {"j": [2]}]},
    }
    assert yaml.safe_load("\n".join(_yaml(tricky, 0))) == tricky


def test_mixed_gpu_sizes_say_to_pin_the_nodes() -> None:
    p = make_plan("1x80GB,1x48GB", ("seed-x-i",), ("first_stage",))
    assert "give each\n# Deployment the nodeSelector" in render_values(p)


# --- the command ---------------------------------------------------------------------------------
def test_helm_writes_the_values_and_prints_the_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["plan", "--gpus", "1x80GB", "--llm", "seed-x-i"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    out = tmp_path / "plan-values.yaml"
    assert main([*argv, "--helm", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == table
    assert captured.err == f"Helm values written to {out}\n"
    expected = helm_values(make_plan("1x80GB", ("seed-x-i",), ("first_stage",)))
    assert yaml.safe_load(out.read_text()) == expected


def test_helm_refusal_exits_1_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan-values.yaml"
    argv = ["plan", "--gpus", "1x141GB:fp8", "--llm", "seed-x", "--llm", "seed-x-i",
            "--llm", "seed-x-edit", "--fp8", "--capacity", "8", "--max-batch", "1",
            "--decode-batch", "1", "--helm", str(out)]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "llm:seed-x-edit" in captured.out  # the plan itself is printed
    assert captured.err.startswith("seedx plan: --helm: the chart cannot express this plan: ")
    assert captured.err.endswith(f"; {out} not written\n")
    assert not out.exists()


def test_helm_imports_no_model_stack(tmp_path: Path) -> None:
    out = tmp_path / "v.yaml"
    code = (
        "import sys; from seedx.cli import main; "
        f"assert main(['plan', '--gpus', '1x80GB', '--llm', 'seed-x-i', '--helm', {str(out)!r}]) "
        "== 0; "
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]; "
        "print('BAD', ','.join(sorted(bad)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().endswith("BAD")
    assert out.exists()
