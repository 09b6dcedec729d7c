"""Why a plan was refused, and what would fit instead: the message of ``PlanRefused``.

Each suggestion is checked, not guessed: the planner runs again with something changed and only
changes that then fit are named. Single changes first: fp8 (or, for GPUs not marked fp8, marking
them), tensor parallelism, de-tokenizers without the ViT (``load_vit: false``), and a smaller
``capacity``, ``max_batch`` or ``decode_batch`` at the largest value that fits. When none is
enough alone, the smallest set of switches that fits with the numeric knobs at their floors is
named, with each knob raised back as far as it goes. Serving fewer LLMs is listed apart, since
it changes what is served. ``max_model_len`` is never suggested: it bounds every request.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from engine.checkpoint.layout import DETOKENIZER_FOR_MODEL
from seedx.placement.inventory import GB, format_spec
from seedx.placement.planner import _Problem, _search

FP8_GPUS = "L4, L40S, RTX 4090, H100, H200"
VARIATIONS_STAGE = "first_stage"
NUMERIC = (
    ("capacity", "--capacity"),
    ("max_batch", "--max-batch"),
    ("decode_batch", "--decode-batch"),
)

FP8_WHY = (
    f"only if these GPUs have fp8 (compute capability 8.9+: {FP8_GPUS}); the LLMs' linear "
    "layers in fp8 take half the memory"
)
VIT_WHY = "SEEDX_DIFFUSION_LOAD_VIT=false: no /v1/images/variations"
Change = tuple[str, str, Callable[[_Problem], _Problem]]


def _gb(value: int) -> str:
    return f"{value / GB:.2f} GB"


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The largest value in ``low..high`` for which ``fits`` holds (monotone), or None."""
    if high < low or not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _with_work(problem: _Problem, **changes: Any) -> _Problem:
    return replace(problem, work=replace(problem.work, **changes))


class _Explainer:
    """Runs the variations of one refused problem, each search once (memoized)."""

    def __init__(self, problem: _Problem) -> None:
        self.problem = problem
        self._memo: dict[object, bool] = {}

    def fits(self, problem: _Problem) -> bool:
        key = (problem.gpus, problem.llms, problem.detokenizers, problem.work, problem.options)
        if key not in self._memo:
            self._memo[key] = _search(problem) is not None
        return self._memo[key]

    # -- the changes -----------------------------------------------------------------------

    def switches(self) -> list[Change]:
        """``(flags, why, change)`` of the on/off changes that apply to this problem."""
        p = self.problem
        changes: list[Change] = []
        if p.llms and not p.options.fp8:
            if any(g.fp8 for g in p.gpus):
                changes.append(
                    ("--fp8", "", lambda q: replace(q, options=replace(q.options, fp8=True)))
                )
            else:
                flags = f"--gpus {format_spec([replace(g, fp8=True) for g in p.gpus])} --fp8"
                changes.append((flags, FP8_WHY, _all_fp8))
        if p.llms and not p.options.tensor_parallel:
            changes.append(("without --no-tp", "", _with_tp))
        if p.detokenizers and p.work.load_vit:
            changes.append(("--no-vit", VIT_WHY, lambda q: _with_work(q, load_vit=False)))
        return changes

    def knobs(self) -> list[tuple[str, str, int]]:
        """``(knob, flag, current value)`` of the numeric knobs that apply and can go lower."""
        p, found = self.problem, []
        for knob, flag in NUMERIC:
            applies = bool(p.llms) if knob == "capacity" else bool(p.detokenizers)
            value = getattr(p.work, knob)
            value = min(value, p.work.max_batch) if knob == "decode_batch" else value
            if applies and value > 1:
                found.append((knob, flag, value))
        return found

    def best(self, problem: _Problem, knob: str, high: int) -> int | None:
        return _largest(1, high, lambda v: self.fits(_with_work(problem, **{knob: v})))

    # -- the answers -----------------------------------------------------------------------

    def singles(self) -> list[str]:
        p = self.problem
        lines = [
            _line(flags, why) for flags, why, change in self.switches() if self.fits(change(p))
        ]
        for knob, flag, value in self.knobs():
            best = self.best(p, knob, value - 1)
            if best is not None:
                lines.append(f"{flag} {best}")
        return lines

    def together(self) -> list[str] | None:
        """Flags that fit together, then the reasons of those that have one."""
        switches, knobs = self.switches(), self.knobs()
        floors = {knob: 1 for knob, _, _ in knobs}
        for size in range(len(switches) + 1):
            for chosen in itertools.combinations(switches, size):
                current = self.problem
                for _, _, change in chosen:
                    current = change(current)
                current = _with_work(current, **floors)
                if not self.fits(current):
                    continue
                flags = [text for text, _, _ in chosen]
                for knob, flag, value in knobs:  # raised back in order, the later still at 1
                    best = self.best(current, knob, value) or 1
                    current = _with_work(current, **{knob: best})
                    if best < value:
                        flags.append(f"{flag} {best}")
                return [" ".join(flags)] + [f"({why})" for text, why, _ in chosen if why]
        return None

    def fewer_llms(self) -> list[str]:
        """The largest subsets of the LLMs that fit, with the de-tokenizers they still need."""
        p = self.problem
        for size in range(len(p.llms) - 1, 0, -1):
            found = []
            for subset in itertools.combinations(p.llms, size):
                keep = {DETOKENIZER_FOR_MODEL.get(n) for n in subset} | {VARIATIONS_STAGE}
                stages = tuple(s for s in p.detokenizers if s in keep)
                if self.fits(replace(p, llms=subset, detokenizers=stages)):
                    flags = " ".join(f"--llm {n}" for n in subset)
                    found.append(f"{flags} (with {', '.join(stages) or 'no de-tokenizer'})")
            if found:
                return found
        return []


def _line(flags: str, why: str) -> str:
    return f"{flags}  ({why})" if why else flags


def _all_fp8(problem: _Problem) -> _Problem:
    gpus = tuple(replace(g, fp8=True) for g in problem.gpus)
    return replace(problem, gpus=gpus, options=replace(problem.options, fp8=True))


def _with_tp(problem: _Problem) -> _Problem:
    return replace(problem, options=replace(problem.options, tensor_parallel=True))


def _needs(problem: _Problem) -> list[str]:
    """Each process's options: per-GPU need with the KV cache at its floor."""
    lines = []
    for name in problem.llms:
        options = [
            f"TP={tp}{' fp8' if fp8 else ''}: {_gb(problem.llm_item(name, tp, fp8).need)}"
            + (f" on each of {tp} GPUs" if tp > 1 else "")
            for tp, fp8 in problem.llm_candidates(name)
        ]
        lines.append(f"  llm:{name}: {'; '.join(options)}")
    lines += [f"  {item.name}: {_gb(item.need)}" for item in problem.diffusion_items()]
    return lines


def _gpu_summary(problem: _Problem) -> str:
    groups = itertools.groupby(problem.gpus, key=lambda g: (g.name, g.usable_bytes, g.fp8))
    parts = []
    for (name, usable, fp8), members in groups:
        count = len(list(members))
        parts.append(f"{count}x{name}{' fp8' if fp8 else ''} ({_gb(usable)} usable each)")
    return ", ".join(parts)


def explain(problem: _Problem) -> str:
    """The refusal: what each process needs, what the GPUs offer, what would fit."""
    names = [f"llm:{n}" for n in problem.llms] + [f"diffusion:{s}" for s in problem.detokenizers]
    lines = [
        f"nothing fits: {', '.join(names)} on {_gpu_summary(problem)}.",
        "Each process needs (per GPU, KV cache at its floor of "
        f"{problem.work.kv_floor_tokens:,} tokens):",
        *_needs(problem),
    ]
    explainer = _Explainer(problem)
    singles = explainer.singles()
    together = None if singles else explainer.together()
    if singles:
        lines += ["Any one of these would fit:", *(f"  {text}" for text in singles)]
    elif together:
        lines += ["These together would fit:", *(f"  {text}" for text in together)]
    fewer = explainer.fewer_llms()
    if fewer:
        lines += ["Fewer LLMs would fit:", *(f"  {text}" for text in fewer)]
    if not (singles or together or fewer):
        lines.append(
            "Nothing fits even with every change this planner knows (fp8, tensor parallelism, "
            "no ViT, capacity, max_batch and decode_batch of 1, fewer LLMs): more or larger "
            "GPUs are needed."
        )
        if any(g.name.endswith("GB") for g in problem.gpus):  # sized from a label in GB
            lines.append(
                "GB in --gpus is 10^9 bytes: the exact size nvidia-smi shows (--gpus 1x23034MiB) "
                "may leave more room."
            )
    return "\n".join(lines)
