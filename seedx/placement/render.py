"""A plan for people (a plain-text table) and for programs (``Plan.to_json``).

The table shows per process the bytes on *each* of its GPUs: weights, KV cache (with the tokens
it holds, all ranks together), the rest (CUDA context, vLLM's activations and graphs, diffusion
activations) and the budget, their sum; then per GPU its usable memory, what the budgets claim and
the headroom left. GB is 10**9 bytes, as in docs/deploy.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from seedx.placement.inventory import GB
from seedx.placement.planner import Plan, ProcessPlan


def gb(value: int) -> str:
    return f"{value / GB:.2f} GB"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _dtype(process: ProcessPlan) -> str:
    return f"{process.dtype} {process.quantization}" if process.quantization else process.dtype


def _kv(process: ProcessPlan) -> str:
    if process.kv_cache_bytes is None:
        return "-"
    return f"{gb(process.kv_cache_bytes)} ({process.kv_tokens:,} tokens)"


def process_rows(plan: Plan) -> list[str]:
    header = ("process", "GPUs", "TP", "dtype", "weights", "KV cache", "other", "budget/GPU")
    rows = [
        (
            p.name,
            ",".join(str(i) for i in p.gpus),
            str(p.tensor_parallel_size) if p.tensor_parallel_size else "-",
            _dtype(p),
            gb(p.weights_bytes),
            _kv(p),
            gb(p.overhead_bytes + p.activation_bytes),
            gb(p.budget_bytes),
        )
        for p in plan.processes
    ]
    return _table(header, rows, right={2, 4, 5, 6, 7})


def gpu_rows(plan: Plan) -> list[str]:
    header = ("GPU", "name", "total", "usable", "used", "free", "processes")
    rows = []
    for gpu in plan.gpus:
        names = [p.name for p in plan.processes if gpu.index in p.gpus]
        rows.append(
            (
                str(gpu.index),
                gpu.name + (" (fp8)" if gpu.fp8 else ""),
                gb(gpu.total_bytes),
                gb(gpu.usable_bytes),
                gb(plan.used_bytes(gpu.index)),
                gb(plan.free_bytes(gpu.index)),
                ", ".join(names) or "(idle)",
            )
        )
    return _table(header, rows, right={0, 2, 3, 4, 5})


def env_lines(plan: Plan) -> list[str]:
    lines = []
    for process in plan.processes:
        lines.append(f"  {process.name}:")
        lines += [f"    {key}={value}" for key, value in process.env.items()]
    return lines


def render_text(plan: Plan, env: bool = True) -> str:
    """The plan as ``seedx plan`` prints it."""
    work = plan.workload
    lines = [
        f"sizes: {plan.source}; capacity {work.capacity}, max_model_len {work.max_model_len}, "
        f"max_batch {work.max_batch} at {work.width}x{work.height}, "
        f"decode_batch {min(work.decode_batch, work.max_batch)}",
        "",
        *process_rows(plan),
        "",
        *gpu_rows(plan),
    ]
    if plan.notes:
        lines += ["", *(f"note: {note}" for note in plan.notes)]
    if env:
        lines += ["", "environment (per process):", *env_lines(plan)]
    return "\n".join(lines) + "\n"
