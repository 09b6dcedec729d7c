"""Which process goes on which GPU, with how much memory: ``plan()`` and :class:`Plan`.

The processes are the ones ``seedx serve`` starts (``llm:<model>`` per LLM, ``diffusion:<stage>``
per de-tokenizer); a plan gives each its GPUs, its tensor-parallel size, dtype and quantization,
its memory budget on each of its GPUs, and the environment variables that make the worker keep to
that budget (``env``). The invariant, tested on every inventory docs/deploy.md shows: on every
GPU the budgets of the processes placed there add up to at most its usable memory
(``Gpu.usable_bytes``), every process is placed once, on GPUs that exist.

Budgets per GPU (constants and their reasons in ``sizes.py`` and ``inventory.py``):

* LLM worker: CUDA context (+ NCCL buffers with TP > 1) + vLLM's activations and CUDA graphs
  (``LLM_OVERHEAD_BYTES``) + its share of the weights + ``kv_cache_bytes`` (vLLM's
  ``kv_cache_memory_bytes``: per GPU). The KV cache is at least one full ``max_model_len``
  context and ``capacity`` x ``TOKENS_PER_REQUEST`` tokens, and grows into what the GPUs' other
  processes leave, up to ``capacity`` full contexts (more would never be used).
* Diffusion worker: CUDA context + weights + ``diffusion_activation_bytes`` at ``max_batch``
  images of ``size``.

The search is deterministic (no randomness, no dict-order or timing dependence): each LLM's
candidates are tried in the order (GPUs, fp8): TP = 1 before 2, 4, 8, and at one TP size 16-bit
before fp8 (fp8 only when allowed and only on fp8 GPUs; one TP group is GPUs of one size). The
combinations are taken fewest GPUs first, then fewest fp8 LLMs; the first that packs wins.
Packing places the processes largest first, each on an idle GPU where one fits (the smallest
such), else on the fullest GPU that still has room (best fit): so de-tokenizers sit beside the
LLMs only when GPUs are short, since sharing a GPU's compute slows both. If that fails, plain
best-fit decreasing packing is tried too. Where nothing fits, :class:`PlanRefused` says what
would.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.checkpoint.layout import DETOKENIZER_FOR_MODEL
from seedx.placement.inventory import MIB, Gpu
from seedx.placement.sizes import (
    CUDA_CONTEXT_BYTES,
    LLM_OVERHEAD_BYTES,
    NCCL_BYTES,
    TOKENS_PER_REQUEST,
    DetokenizerSize,
    LlmSize,
    ModelSizes,
    diffusion_activation_bytes,
)

FORMAT_VERSION = 1
DEFAULT_VAE_TILING_MIN_SIDE = 2048  # DiffusionWorkerSettings.vae_tiling_min_side


class PlanRefused(RuntimeError):
    """Nothing fits; the message says why and what would fit."""


@dataclass(frozen=True)
class Workload:
    """The knobs that size the processes (the workers' settings of the same names)."""

    capacity: int = 32  # LLM jobs at once (SEEDX_LLM_CAPACITY)
    max_model_len: int = 2048  # SEEDX_LLM_MAX_MODEL_LEN
    max_batch: int = 4  # images per UNet batch (SEEDX_DIFFUSION_MAX_BATCH)
    width: int = 1024  # the image size the diffusion budget is made for
    height: int = 1024
    decode_batch: int = 4  # images per VAE decode (SEEDX_DIFFUSION_DECODE_BATCH)
    load_vit: bool = True  # de-tokenizers hold the ViT (/v1/images/variations)

    def __post_init__(self) -> None:
        checks = {
            "capacity": 1 <= self.capacity <= 1024,
            "max_model_len": self.max_model_len >= 256,
            "max_batch": 1 <= self.max_batch <= 64,
            "decode_batch": 1 <= self.decode_batch <= 64,
            "size": self.width >= 64 and self.height >= 64 and not (self.width | self.height) % 8,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"workload: invalid {', '.join(bad)} ({self})")

    @property
    def kv_floor_tokens(self) -> int:
        return max(self.max_model_len, self.capacity * TOKENS_PER_REQUEST)

    @property
    def kv_ceiling_tokens(self) -> int:
        return max(self.kv_floor_tokens, self.capacity * self.max_model_len)


@dataclass(frozen=True)
class Options:
    """What the planner may do: fp8 LLM weights (on fp8 GPUs), tensor parallelism."""

    fp8: bool = False
    tensor_parallel: bool = True


@dataclass(frozen=True)
class ProcessPlan:
    """One process of the plan; every byte figure is per GPU of ``gpus``."""

    name: str  # llm:<model> | diffusion:<stage>, as seedx serve names its children
    stage: str  # llm | diffusion
    model: str  # the LLM's name or the de-tokenizer's stage
    gpus: tuple[int, ...]
    tensor_parallel_size: int | None  # LLM only
    dtype: str
    quantization: str | None  # None | "fp8" (LLM only)
    weights_bytes: int
    overhead_bytes: int  # CUDA context (+ NCCL), and for an LLM vLLM's activations and graphs
    activation_bytes: int  # diffusion: UNet batch + VAE decode; LLM: 0 (in overhead)
    kv_cache_bytes: int | None
    kv_tokens: int | None
    budget_bytes: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Where every process runs and with what memory; ``to_json``/``from_json`` round-trip."""

    gpus: tuple[Gpu, ...]
    processes: tuple[ProcessPlan, ...]
    workload: Workload
    options: Options
    source: str  # where the sizes came from
    notes: tuple[str, ...] = ()

    def used_bytes(self, index: int) -> int:
        return sum(p.budget_bytes for p in self.processes if index in p.gpus)

    def free_bytes(self, index: int) -> int:
        """Headroom: the GPU's usable memory that no budget claims."""
        gpu = next(g for g in self.gpus if g.index == index)
        return gpu.usable_bytes - self.used_bytes(index)

    def process(self, name: str) -> ProcessPlan:
        return next(p for p in self.processes if p.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"plan: unsupported format_version {data.get('format_version')}")
        processes = tuple(ProcessPlan(**{**p, "gpus": tuple(p["gpus"])}) for p in data["processes"])
        return cls(
            gpus=tuple(Gpu(**g) for g in data["gpus"]),
            processes=processes,
            workload=Workload(**data["workload"]),
            options=Options(**data["options"]),
            source=data["source"],
            notes=tuple(data["notes"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


# -- what each process needs ----------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """A process to place: ``need`` bytes on each of ``tp`` GPUs (of one size; fp8 GPUs if
    ``fp8``). ``order``: its position in the request, which breaks ties."""

    name: str
    need: int
    order: int
    tp: int = 1
    fp8: bool = False


def _mib_up(value: int) -> int:
    return -(-value // MIB) * MIB


def _llm_fixed_bytes(llm: LlmSize, dtype_bytes: int, tp: int, fp8: bool) -> int:
    """Everything but the KV cache, per GPU."""
    nccl = NCCL_BYTES if tp > 1 else 0
    return (
        CUDA_CONTEXT_BYTES
        + nccl
        + LLM_OVERHEAD_BYTES
        + llm.weight_bytes_per_gpu(dtype_bytes, tp, fp8)
    )


def _kv_bytes(llm: LlmSize, dtype_bytes: int, tp: int, tokens: int) -> int:
    return _mib_up(math.ceil(tokens * llm.kv_bytes_per_token(dtype_bytes) / tp))


def _kv_tokens(llm: LlmSize, dtype_bytes: int, tp: int, kv_bytes: int) -> int:
    return kv_bytes * tp // llm.kv_bytes_per_token(dtype_bytes)


def _diffusion_parts(detok: DetokenizerSize, dtype_bytes: int, work: Workload) -> tuple[int, int]:
    weights = detok.weight_bytes(dtype_bytes, work.load_vit)
    activations = diffusion_activation_bytes(
        detok.guidance_rows,
        work.width,
        work.height,
        work.max_batch,
        work.decode_batch,
        DEFAULT_VAE_TILING_MIN_SIDE,
    )
    return weights, activations


def _diffusion_need(detok: DetokenizerSize, dtype_bytes: int, work: Workload) -> int:
    weights, activations = _diffusion_parts(detok, dtype_bytes, work)
    return CUDA_CONTEXT_BYTES + weights + activations


@dataclass(frozen=True)
class _Problem:
    """The fixed inputs of one search."""

    gpus: tuple[Gpu, ...]
    sizes: ModelSizes
    llms: tuple[str, ...]
    detokenizers: tuple[str, ...]
    work: Workload
    options: Options

    def llm_candidates(self, name: str) -> list[tuple[int, bool]]:
        """``(tp, fp8)`` in order of preference: fewer GPUs first, 16-bit before fp8."""
        llm = self.sizes.llms[name]
        largest_class = max(
            (sum(1 for g in self.gpus if g.total_bytes == gpu.total_bytes) for gpu in self.gpus),
            default=0,
        )
        tps = [tp for tp in llm.tp_sizes() if tp <= largest_class]
        if not self.options.tensor_parallel:
            tps = tps[:1]
        quants = [False, True] if self.options.fp8 and any(g.fp8 for g in self.gpus) else [False]
        return [(tp, fp8) for tp in tps for fp8 in quants]

    def llm_item(self, name: str, tp: int, fp8: bool) -> _Item:
        llm = self.sizes.llms[name]
        b = self.sizes.dtype_bytes
        need = _llm_fixed_bytes(llm, b, tp, fp8) + _kv_bytes(llm, b, tp, self.work.kv_floor_tokens)
        return _Item(f"llm:{name}", need, self.llms.index(name), tp, fp8)

    def diffusion_items(self) -> list[_Item]:
        b = self.sizes.dtype_bytes
        return [
            _Item(
                f"diffusion:{stage}",
                _diffusion_need(self.sizes.detokenizers[stage], b, self.work),
                len(self.llms) + i,
            )
            for i, stage in enumerate(self.detokenizers)
        ]


# -- packing --------------------------------------------------------------------------------


def _gpu_sets(item: _Item, gpus: Sequence[Gpu], free: dict[int, int]) -> Iterator[tuple[int, ...]]:
    """Deterministic choices of ``item.tp`` GPUs of one size where the item fits: per size
    class, the fullest such GPUs (ties: lower index), and the idle ones (lowest indices)."""
    fitting = [g for g in gpus if free[g.index] >= item.need and (g.fp8 or not item.fp8)]
    for total in sorted({g.total_bytes for g in fitting}):
        group = [g for g in fitting if g.total_bytes == total]
        fullest = sorted(group, key=lambda g: (free[g.index], g.index))
        idle = [g for g in group if free[g.index] == g.usable_bytes]
        for choice in (fullest, idle):
            if len(choice) >= item.tp:
                yield tuple(sorted(g.index for g in choice[: item.tp]))


def _choose(
    item: _Item, gpus: Sequence[Gpu], free: dict[int, int], spread: bool
) -> tuple[int, ...] | None:
    """The GPUs for one item: with ``spread``, idle GPUs first (the smallest that fit), then the
    fullest that fit; without, the fullest that fit."""
    usable = {g.index: g.usable_bytes for g in gpus}

    def key(choice: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
        idle = all(free[i] == usable[i] for i in choice)
        return (0 if (spread and idle) else 1, sum(free[i] for i in choice), choice)

    return min(_gpu_sets(item, gpus, free), key=key, default=None)


def _pack(
    items: list[_Item], gpus: Sequence[Gpu], spread: bool
) -> dict[str, tuple[int, ...]] | None:
    free = {g.index: g.usable_bytes for g in gpus}
    placed: dict[str, tuple[int, ...]] = {}
    for item in sorted(items, key=lambda it: (-it.need * it.tp, it.order)):
        choice = _choose(item, gpus, free, spread)
        if choice is None:
            return None
        for index in choice:
            free[index] -= item.need
        placed[item.name] = choice
    return placed


def _could_fit(item: _Item, gpus: Sequence[Gpu]) -> bool:
    """Whether some size class has ``item.tp`` GPUs (fp8 ones if it needs them) big enough."""
    fitting = [g for g in gpus if g.usable_bytes >= item.need and (g.fp8 or not item.fp8)]
    return any(
        sum(1 for g in fitting if g.total_bytes == total) >= item.tp
        for total in {g.total_bytes for g in fitting}
    )


def _combos(problem: _Problem) -> list[tuple[tuple[int, bool], ...]]:
    """Every choice of ``(tp, fp8)`` per LLM that could fit on its own, fewest GPUs first, then
    fewest fp8 LLMs, then each LLM's own preference order."""
    per_llm = [
        [
            (tp, fp8)
            for tp, fp8 in problem.llm_candidates(name)
            if _could_fit(problem.llm_item(name, tp, fp8), problem.gpus)
        ]
        for name in problem.llms
    ]
    combos = list(itertools.product(*per_llm))
    indices = {combo: tuple(per_llm[i].index(c) for i, c in enumerate(combo)) for combo in combos}
    return sorted(
        combos,
        key=lambda c: (sum(tp for tp, _ in c), sum(fp8 for _, fp8 in c), indices[c]),
    )


def _search(
    problem: _Problem,
) -> tuple[tuple[tuple[int, bool], ...], dict[str, tuple[int, ...]]] | None:
    diffusion = problem.diffusion_items()
    total_usable = sum(g.usable_bytes for g in problem.gpus)
    largest = max((g.usable_bytes for g in problem.gpus), default=0)
    if any(item.need > largest for item in diffusion):
        return None
    for combo in _combos(problem):
        items = [
            problem.llm_item(name, tp, fp8)
            for name, (tp, fp8) in zip(problem.llms, combo, strict=True)
        ] + diffusion
        if sum(it.need * it.tp for it in items) > total_usable:
            continue
        for spread in (True, False):
            placed = _pack(items, problem.gpus, spread)
            if placed is not None:
                return combo, placed
    return None


# -- the plan -------------------------------------------------------------------------------


def _grow_kv(
    problem: _Problem,
    combo: tuple[tuple[int, bool], ...],
    placed: dict[str, tuple[int, ...]],
    used: dict[int, int],
) -> dict[str, int]:
    """Each LLM's KV bytes per GPU: its floor, plus its share of what its GPUs leave (``used``:
    every budget with the LLMs' KV at their floors), up to its ceiling."""
    free = {g.index: g.usable_bytes - used[g.index] for g in problem.gpus}
    pending = {i: sum(1 for n in problem.llms if i in placed[f"llm:{n}"]) for i in free}
    kv = {}
    b = problem.sizes.dtype_bytes
    for name, (tp, _) in zip(problem.llms, combo, strict=True):
        llm = problem.sizes.llms[name]
        gpus = placed[f"llm:{name}"]
        floor = _kv_bytes(llm, b, tp, problem.work.kv_floor_tokens)
        ceiling = _kv_bytes(llm, b, tp, problem.work.kv_ceiling_tokens)
        share = min(free[i] // pending[i] for i in gpus)
        extra = max(0, min(share, ceiling - floor)) // MIB * MIB
        for i in gpus:
            free[i] -= extra
            pending[i] -= 1
        kv[name] = floor + extra
    return kv


def _visible(gpus: tuple[int, ...]) -> dict[str, str]:
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpus),
    }


def _llm_process(
    problem: _Problem, name: str, tp: int, fp8: bool, gpus: tuple[int, ...], kv: int
) -> ProcessPlan:
    llm = problem.sizes.llms[name]
    b, dtype, work = problem.sizes.dtype_bytes, problem.sizes.dtype, problem.work
    weights = llm.weight_bytes_per_gpu(b, tp, fp8)
    overhead = _llm_fixed_bytes(llm, b, tp, fp8) - weights
    env = {
        **_visible(gpus),
        "SEEDX_LLM_TENSOR_PARALLEL_SIZE": str(tp),
        "SEEDX_LLM_DTYPE": dtype,
        "SEEDX_LLM_KV_CACHE_BYTES": str(kv),
        "SEEDX_LLM_CAPACITY": str(work.capacity),
        "SEEDX_LLM_MAX_MODEL_LEN": str(work.max_model_len),
    }
    if fp8:
        env["SEEDX_LLM_QUANTIZATION"] = "fp8"
    return ProcessPlan(
        name=f"llm:{name}",
        stage="llm",
        model=name,
        gpus=gpus,
        tensor_parallel_size=tp,
        dtype=dtype,
        quantization="fp8" if fp8 else None,
        weights_bytes=weights,
        overhead_bytes=overhead,
        activation_bytes=0,
        kv_cache_bytes=kv,
        kv_tokens=_kv_tokens(llm, b, tp, kv),
        budget_bytes=weights + overhead + kv,
        env=dict(sorted(env.items())),
    )


def _diffusion_process(problem: _Problem, stage: str, gpus: tuple[int, ...]) -> ProcessPlan:
    work = problem.work
    weights, activations = _diffusion_parts(
        problem.sizes.detokenizers[stage], problem.sizes.dtype_bytes, work
    )
    env = {
        **_visible(gpus),
        "SEEDX_DIFFUSION_DTYPE": problem.sizes.dtype,
        "SEEDX_DIFFUSION_MAX_BATCH": str(work.max_batch),
        "SEEDX_DIFFUSION_MAX_BATCH_PIXELS": str(work.max_batch * work.width * work.height),
        "SEEDX_DIFFUSION_DECODE_BATCH": str(min(work.decode_batch, work.max_batch)),
    }
    if not work.load_vit:
        env["SEEDX_DIFFUSION_LOAD_VIT"] = "false"
    return ProcessPlan(
        name=f"diffusion:{stage}",
        stage="diffusion",
        model=stage,
        gpus=gpus,
        tensor_parallel_size=None,
        dtype=problem.sizes.dtype,
        quantization=None,
        weights_bytes=weights,
        overhead_bytes=CUDA_CONTEXT_BYTES,
        activation_bytes=activations,
        kv_cache_bytes=None,
        kv_tokens=None,
        budget_bytes=CUDA_CONTEXT_BYTES + weights + activations,
        env=dict(sorted(env.items())),
    )


def _notes(problem: _Problem) -> tuple[str, ...]:
    work = problem.work
    notes = []
    if problem.detokenizers:
        notes.append(
            f"diffusion budgets are for images up to {work.width}x{work.height}: larger ones "
            "batch fewer at once (SEEDX_DIFFUSION_MAX_BATCH_PIXELS)"
        )
    for name in problem.llms:
        stage = DETOKENIZER_FOR_MODEL.get(name)
        if stage and stage not in problem.detokenizers:
            notes.append(f"{name} draws with {stage}, which this plan does not run")
    if not work.load_vit:
        notes.append("no ViT in the de-tokenizers: /v1/images/variations is not served")
    return tuple(notes)


def _build(
    problem: _Problem,
    combo: tuple[tuple[int, bool], ...],
    placed: dict[str, tuple[int, ...]],
) -> Plan:
    used = dict.fromkeys((g.index for g in problem.gpus), 0)
    for name, (tp, fp8) in zip(problem.llms, combo, strict=True):
        for i in placed[f"llm:{name}"]:
            used[i] += problem.llm_item(name, tp, fp8).need
    diffusion = [
        _diffusion_process(problem, s, placed[f"diffusion:{s}"]) for s in problem.detokenizers
    ]
    for process in diffusion:
        used[process.gpus[0]] += process.budget_bytes
    kv = _grow_kv(problem, combo, placed, used)
    llms = [
        _llm_process(problem, name, tp, fp8, placed[f"llm:{name}"], kv[name])
        for name, (tp, fp8) in zip(problem.llms, combo, strict=True)
    ]
    return Plan(
        gpus=problem.gpus,
        processes=tuple(llms + diffusion),
        workload=problem.work,
        options=problem.options,
        source=problem.sizes.source,
        notes=_notes(problem),
    )


def _problem(
    gpus: Sequence[Gpu],
    sizes: ModelSizes,
    llms: Sequence[str],
    detokenizers: Sequence[str],
    workload: Workload,
    options: Options,
) -> _Problem:
    if not gpus:
        raise ValueError("no GPUs to plan for")
    if len({g.index for g in gpus}) != len(gpus):
        raise ValueError("two GPUs with one index")
    unknown = [n for n in llms if n not in sizes.llms]
    unknown += [s for s in detokenizers if s not in sizes.detokenizers]
    if unknown:
        have = sorted(sizes.llms) + sorted(sizes.detokenizers)
        raise ValueError(f"not in {sizes.source}: {', '.join(unknown)} (have {', '.join(have)})")
    if len(set(llms)) != len(llms) or len(set(detokenizers)) != len(detokenizers):
        raise ValueError("an LLM or de-tokenizer is named twice")
    if options.fp8 and not any(g.fp8 for g in gpus):
        raise ValueError(
            "--fp8: none of these GPUs has fp8 (compute capability 8.9+: L4, L40S, RTX 4090, "
            "H100, H200); if yours do, say so in --gpus (e.g. 1x80GB:h100 or 2x24GB:fp8)"
        )
    return _Problem(tuple(gpus), sizes, tuple(llms), tuple(detokenizers), workload, options)


def try_plan(
    gpus: Sequence[Gpu],
    sizes: ModelSizes,
    llms: Sequence[str],
    detokenizers: Sequence[str],
    workload: Workload = Workload(),
    options: Options = Options(),
) -> Plan | None:
    """The plan, or None where nothing fits (``plan`` says why)."""
    problem = _problem(gpus, sizes, llms, detokenizers, workload, options)
    found = _search(problem)
    return None if found is None else _build(problem, *found)


def plan(
    gpus: Sequence[Gpu],
    sizes: ModelSizes,
    llms: Sequence[str],
    detokenizers: Sequence[str],
    workload: Workload = Workload(),
    options: Options = Options(),
) -> Plan:
    """The plan for serving ``llms`` and ``detokenizers`` on ``gpus``; :class:`PlanRefused`
    with what would fit when nothing does; ValueError for inputs that make no sense."""
    result = try_plan(gpus, sizes, llms, detokenizers, workload, options)
    if result is None:
        from seedx.placement.refusal import explain  # it imports this module

        problem = _problem(gpus, sizes, llms, detokenizers, workload, options)
        raise PlanRefused(explain(problem))
    return result


__all__ = [
    "Options",
    "Plan",
    "PlanRefused",
    "ProcessPlan",
    "Workload",
    "plan",
    "try_plan",
]
