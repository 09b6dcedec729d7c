"""``seedx bench NAME [ARGS]``: each benchmark lives beside the code it measures.

This module names them and says in one line what each measures (``seedx bench --help``); it
imports a benchmark's module only to run it, so the help stays instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Bench:
    """Where a benchmark's ``main(argv)`` lives, and what it measures, in one line."""

    module: str
    summary: str


BENCHES: dict[str, Bench] = {
    "parity": Bench(
        "workers.llm.parity",
        "this project vs the original SEED-X code on the committed goldens (docs/parity.md)",
    ),
    "query-rows": Bench(
        "engine.bench.query_rows",
        "the 64 image-query rows in one pass vs the reference's 65-step forced decode",
    ),
    "transport": Bench(
        "workers.bench",
        "Redis job transport: embedding blob, job round trip and reply-stream throughput",
    ),
    "gateway": Bench(
        "server.bench",
        "time to first token that gateway + Redis add, and saturated throughput (fake engine)",
    ),
    "llm": Bench(
        "workers.llm.bench",
        "the LLM worker's vLLM engine wrapper vs vLLM's offline LLM.generate",
    ),
    "diffusion": Bench(
        "workers.diffusion.bench",
        "the diffusion worker vs the bare de-tokenizer loop, and batch scaling",
    ),
    "chaos": Bench(
        "seedx.chaos.bench",
        "the whole stack under overload, crashes, restarts and hostile input",
    ),
    "gpu-check": Bench(
        "seedx.gpu_check",
        "speed and memory at SEED-X's real size, for a lent GPU (scripts/gpu-check.sh)",
    ),
}


def bench_list() -> str:
    """The benchmarks, one per line with what it measures (the epilog of ``seedx bench -h``)."""
    width = max(len(name) for name in BENCHES)
    lines = ["benchmarks:"]
    lines += [f"  {name:<{width}}  {bench.summary}" for name, bench in BENCHES.items()]
    lines.append("")
    lines.append("`seedx bench NAME --help` shows the options of one benchmark.")
    return "\n".join(lines)


def run_bench(name: str, argv: list[str]) -> int:
    bench = BENCHES.get(name)
    if bench is None:
        print(f"unknown benchmark {name!r}; choose from {', '.join(sorted(BENCHES))}")
        return 2
    module = importlib.import_module(bench.module)
    return int(module.main(argv) or 0)
