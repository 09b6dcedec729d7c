"""The planner: the invariant on every inventory docs/deploy.md shows (and more), the TP and fp8
choices, placement, the KV cache, determinism, JSON, and refusals that name what would fit."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from seedx.placement.inventory import Gpu, parse_gpus
from seedx.placement.planner import Options, Plan, PlanRefused, Workload, plan, try_plan
from seedx.placement.sizes import ModelSizes, read_serving_tree, released_sizes

ROOT = Path(__file__).resolve().parents[3]
SIZES = released_sizes()
INVENTORIES = ("1x24GB", "1x48GB", "1x80GB", "1x141GB", "2x24GB", "4x24GB", "2x80GB", "8x80GB")
MORE_INVENTORIES = ("2x24GB,1x80GB:h100,1x141GB", "3x40GB", "1x141GB,2x48GB:l40s", "8x24GB:l4")
SETS = {
    "SEED-X-I only": (("seed-x-i",), ("first_stage",)),
    "SEED-X-I + Edit": (("seed-x-i", "seed-x-edit"), ("first_stage", "second_stage")),
    "everything": (("seed-x", "seed-x-i", "seed-x-edit"), ("first_stage", "second_stage")),
    "LLM only": (("seed-x-i",), ()),
}
WORKLOADS = (
    Workload(),
    Workload(capacity=8, max_batch=1, decode_batch=1),
    Workload(capacity=1, max_batch=1, decode_batch=1, load_vit=False),
    Workload(capacity=64, max_batch=8, width=2048, height=2048),
    Workload(capacity=16, max_model_len=4096, max_batch=2, width=768, height=1344),
)


def check(result: Plan, llms: tuple[str, ...], stages: tuple[str, ...]) -> None:
    """The invariant: budgets fit every GPU, GPUs exist, every process placed once; and each
    process's figures and environment agree."""
    gpus = {g.index: g for g in result.gpus}
    names = [p.name for p in result.processes]
    assert names == [f"llm:{n}" for n in llms] + [f"diffusion:{s}" for s in stages]
    for index, gpu in gpus.items():
        assert result.used_bytes(index) <= gpu.usable_bytes
        assert result.free_bytes(index) >= 0
    for p in result.processes:
        assert p.gpus
        assert set(p.gpus) <= set(gpus)
        assert len(set(p.gpus)) == len(p.gpus)
        assert p.env["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in p.gpus)
        assert p.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert p.budget_bytes == (
            p.weights_bytes + p.overhead_bytes + p.activation_bytes + (p.kv_cache_bytes or 0)
        )
        if p.stage == "llm":
            check_llm(result, p, gpus)
        else:
            assert p.tensor_parallel_size is None
            assert len(p.gpus) == 1
            assert p.env["SEEDX_DIFFUSION_MAX_BATCH"] == str(result.workload.max_batch)


def check_llm(result: Plan, p: object, gpus: dict[int, Gpu]) -> None:
    from seedx.placement.planner import ProcessPlan

    assert isinstance(p, ProcessPlan)
    assert p.tensor_parallel_size == len(p.gpus)
    assert len({gpus[i].total_bytes for i in p.gpus}) == 1  # one TP group: one GPU size
    assert p.kv_tokens is not None
    assert p.kv_cache_bytes is not None
    assert result.workload.kv_floor_tokens <= p.kv_tokens
    assert p.kv_tokens <= result.workload.kv_ceiling_tokens + 16  # MiB rounding
    assert p.env["SEEDX_LLM_KV_CACHE_BYTES"] == str(p.kv_cache_bytes)
    assert p.env["SEEDX_LLM_TENSOR_PARALLEL_SIZE"] == str(p.tensor_parallel_size)
    assert p.env["SEEDX_LLM_DTYPE"] == p.dtype
    if p.quantization == "fp8":
        assert result.options.fp8
        assert all(gpus[i].fp8 for i in p.gpus)
        assert p.env["SEEDX_LLM_QUANTIZATION"] == "fp8"
    else:
        assert "SEEDX_LLM_QUANTIZATION" not in p.env


def test_the_invariant_on_every_inventory() -> None:
    planned = refused = 0
    for spec, fp8, (llms, stages), work in itertools.product(
        INVENTORIES + MORE_INVENTORIES, (False, True), SETS.values(), WORKLOADS
    ):
        gpus = parse_gpus(f"{spec.replace(',', ':fp8,')}:fp8" if fp8 else spec)
        result = try_plan(gpus, SIZES, llms, stages, work, Options(fp8=fp8))
        if result is None:
            refused += 1
            continue
        planned += 1
        check(result, llms, stages)
    assert planned > 150, (planned, refused)
    assert refused > 50, (planned, refused)


def test_two_24gb_gpus_shard_the_llm() -> None:
    """LLaMA-13B in 16-bit does not fit a 24 GB GPU: TP=2 over both."""
    result = plan(parse_gpus("2x24GB"), SIZES, ["seed-x-i"], [], Workload(capacity=4))
    (llm,) = result.processes
    assert (llm.gpus, llm.tensor_parallel_size, llm.quantization) == ((0, 1), 2, None)
    assert result.notes == ("seed-x-i draws with first_stage, which this plan does not run",)
    assert llm.env["SEEDX_LLM_TENSOR_PARALLEL_SIZE"] == "2"
    with pytest.raises(PlanRefused, match="without --no-tp"):
        plan(
            parse_gpus("2x24GB"),
            SIZES,
            ["seed-x-i"],
            [],
            Workload(capacity=4),
            Options(tensor_parallel=False),
        )


def test_fp8_before_more_gpus_and_16_bit_before_fp8() -> None:
    work = Workload(capacity=16)
    one_gpu_fp8 = plan(parse_gpus("2x40GB:fp8"), SIZES, ["seed-x-i"], [], work, Options(fp8=True))
    assert (
        one_gpu_fp8.processes[0].tensor_parallel_size,
        one_gpu_fp8.processes[0].quantization,
    ) == (1, "fp8")
    assert one_gpu_fp8.processes[0].env["SEEDX_LLM_QUANTIZATION"] == "fp8"
    without = plan(parse_gpus("2x40GB:fp8"), SIZES, ["seed-x-i"], [], work)
    assert (without.processes[0].tensor_parallel_size, without.processes[0].quantization) == (
        2,
        None,
    )
    # fp8 on one 24 GB GPU is just too big; TP=2 in 16-bit wins over TP=2 in fp8
    sharded = plan(
        parse_gpus("2x24GB:l4"), SIZES, ["seed-x-i"], [], Workload(capacity=4), Options(fp8=True)
    )
    assert (sharded.processes[0].tensor_parallel_size, sharded.processes[0].quantization) == (
        2,
        None,
    )


def test_fp8_only_on_fp8_gpus() -> None:
    with pytest.raises(ValueError, match="none of these GPUs has fp8"):
        plan(
            parse_gpus("2x80GB:a100"),
            SIZES,
            ["seed-x-i"],
            ["first_stage"],
            options=Options(fp8=True),
        )
    mixed = parse_gpus("1x40GB:a100,1x40GB:l40s")
    work = Workload(capacity=12, max_batch=1, decode_batch=1)  # 16-bit needs 38.7 of 37.7 GB
    result = plan(mixed, SIZES, ["seed-x-i"], ["first_stage"], work, Options(fp8=True))
    assert result.process("llm:seed-x-i").gpus == (1,)
    assert result.process("llm:seed-x-i").quantization == "fp8"
    assert result.process("diffusion:first_stage").gpus == (0,)


def test_idle_gpus_before_sharing_and_sharing_when_short() -> None:
    (llms, stages) = SETS["SEED-X-I only"]
    apart = plan(parse_gpus("2x80GB"), SIZES, llms, stages)
    assert [p.gpus for p in apart.processes] == [(0,), (1,)]
    together = plan(parse_gpus("1x80GB"), SIZES, llms, stages)
    assert [p.gpus for p in together.processes] == [(0,), (0,)]
    # beside the LLM the KV cache is what the de-tokenizer leaves; alone it reaches the ceiling
    # or the GPU's end
    assert together.free_bytes(0) == pytest.approx(0, abs=2**20)
    assert apart.processes[0].kv_tokens > together.processes[0].kv_tokens


def test_kv_between_floor_and_ceiling() -> None:
    result = plan(parse_gpus("8x80GB"), SIZES, ["seed-x-i"], [], Workload(capacity=2))
    assert result.processes[0].kv_tokens == pytest.approx(2 * 2048, abs=16)
    assert result.free_bytes(0) > 30 * 10**9  # the rest stays free: more KV would not be used
    floor = plan(parse_gpus("1x80GB"), SIZES, ["seed-x-i"], ["first_stage"])
    assert floor.processes[0].kv_tokens >= 32 * 512


def test_co_located_llms_share_what_is_left() -> None:
    (llms, stages) = SETS["SEED-X-I + Edit"]
    result = plan(parse_gpus("1x141GB:h200"), SIZES, llms, stages, options=Options(fp8=True))
    check(result, llms, stages)
    assert {p.gpus for p in result.processes} == {(0,)}
    assert result.free_bytes(0) < 2**21


def test_notes() -> None:
    result = plan(
        parse_gpus("2x80GB"), SIZES, ["seed-x-edit"], ["first_stage"], Workload(load_vit=False)
    )
    assert any("seed-x-edit draws with second_stage" in note for note in result.notes)
    assert any("/v1/images/variations is not served" in note for note in result.notes)
    assert result.process("diffusion:first_stage").env["SEEDX_DIFFUSION_LOAD_VIT"] == "false"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"llms": ["seed-x-2"]}, "not in released SEED-X-17B: seed-x-2"),
        ({"llms": ["seed-x-i", "seed-x-i"]}, "named twice"),
        ({"gpus": []}, "no GPUs"),
    ],
)
def test_bad_requests(kwargs: dict[str, object], words: str) -> None:
    args: dict[str, object] = {
        "gpus": parse_gpus("1x80GB"),
        "sizes": SIZES,
        "llms": ["seed-x-i"],
        "detokenizers": [],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(words)):
        plan(**args)  # type: ignore[arg-type]


def test_bad_workloads() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Workload(capacity=0)
    with pytest.raises(ValueError, match="size"):
        Workload(width=1001)


def test_same_input_same_plan() -> None:
    (llms, stages) = SETS["everything"]
    gpus = parse_gpus("2x24GB,1x80GB:h100,1x141GB")
    first = plan(gpus, SIZES, llms, stages, Workload(capacity=8), Options(fp8=True))
    assert (
        plan(gpus, released_sizes(), llms, stages, Workload(capacity=8), Options(fp8=True)) == first
    )


def test_same_plan_in_other_processes() -> None:
    """No dependence on hash seeds (set order) or anything else of one process."""
    argv = [sys.executable, "-m", "seedx.cli", "plan", "--gpus", "2x24GB,1x80GB:h100,1x141GB",
            "--capacity", "8", "--fp8", "--json"]  # fmt: skip
    outputs = {
        subprocess.run(
            argv, capture_output=True, text=True, check=True, cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(outputs) == 1


def test_json_round_trip() -> None:
    for spec, (llms, stages) in itertools.product(
        ("1x80GB", "4x24GB:fp8", "8x80GB"), SETS.values()
    ):
        work = Workload(capacity=8, max_batch=1, decode_batch=1)
        result = try_plan(
            parse_gpus(spec), SIZES, llms, stages, work, Options(fp8=spec.endswith("fp8"))
        )
        if result is not None:
            assert Plan.from_json(result.to_json()) == result
    with pytest.raises(ValueError, match="format_version"):
        Plan.from_dict({"format_version": 99})


def test_a_serving_tree_plans_with_its_own_sizes(serving_tree: Path) -> None:
    sizes = read_serving_tree(serving_tree)
    llms = tuple(sorted(sizes.llms))
    result = plan(parse_gpus("2x48GB"), sizes, llms, ("first_stage", "second_stage"))
    check(result, llms, ("first_stage", "second_stage"))
    assert {p.dtype for p in result.processes} == {"float16"}
    assert result.source == str(serving_tree)


# -- refusals -------------------------------------------------------------------------------


def refusal(
    spec: str, set_name: str, work: Workload | None = None, options: Options | None = None
) -> str:
    llms, stages = SETS[set_name]
    work, options = work or Workload(), options or Options()
    with pytest.raises(PlanRefused) as refused:
        plan(parse_gpus(spec), SIZES, llms, stages, work, options)
    return str(refused.value)


def test_refusal_names_single_changes_that_fit() -> None:
    message = refusal("1x141GB", "SEED-X-I + Edit")
    assert "llm:seed-x-i: TP=1: 47.07 GB" in message
    for line in ("--gpus 1x141GB:fp8 --fp8", "--capacity 17", "--max-batch 2", "--decode-batch 2"):
        assert re.search(rf"^  {re.escape(line)}\b", message, re.M), line
    assert "--llm seed-x-i (with first_stage)" in message
    llms, stages = SETS["SEED-X-I + Edit"]
    gpus = parse_gpus("1x141GB")
    for knob, value in (("capacity", 17), ("max_batch", 2), ("decode_batch", 2)):
        fits = replace(Workload(), **{knob: value})
        assert try_plan(gpus, SIZES, llms, stages, fits) is not None
        too_big = replace(Workload(), **{knob: value + 1})
        assert try_plan(gpus, SIZES, llms, stages, too_big) is None
    assert try_plan(parse_gpus("1x141GB:fp8"), SIZES, llms, stages, options=Options(fp8=True))


def test_refusal_combines_changes_when_none_fits_alone() -> None:
    message = refusal("1x80GB", "SEED-X-I + Edit")
    flags = re.search(r"These together would fit:\n  (.*)\n", message)
    assert flags is not None
    assert flags.group(1) == "--gpus 1x80GB:fp8 --fp8 --capacity 6 --max-batch 1"
    assert "only if these GPUs have fp8" in message
    llms, stages = SETS["SEED-X-I + Edit"]
    work = Workload(capacity=6, max_batch=1)
    assert try_plan(parse_gpus("1x80GB:fp8"), SIZES, llms, stages, work, Options(fp8=True))


def test_refusal_offers_fewer_llms_and_no_vit() -> None:
    message = refusal("2x80GB", "everything")
    assert "--llm seed-x-i --llm seed-x-edit (with first_stage, second_stage)" in message
    work = Workload(capacity=26, max_batch=1, decode_batch=1)
    message = refusal("1x48GB:l40s", "SEED-X-I only", work, Options(fp8=True))
    assert re.search(r"^  --no-vit  \(SEEDX_DIFFUSION_LOAD_VIT=false", message, re.M)
    assert re.search(r"^  --capacity 24$", message, re.M)


def test_refusal_when_nothing_helps() -> None:
    message = refusal("1x24GB", "SEED-X-I only")
    assert "more or larger GPUs are needed" in message
    assert "GB in --gpus is 10^9 bytes" in message


def test_sizes_are_not_mutated() -> None:
    before = released_sizes()
    plan(parse_gpus("8x80GB"), SIZES, *SETS["everything"])
    assert before == SIZES
    assert isinstance(SIZES, ModelSizes)
