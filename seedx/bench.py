"""``seedx bench NAME [ARGS]``: each benchmark lives beside the code it measures."""

from __future__ import annotations

import importlib

BENCHES = {
    "parity": "workers.llm.parity",
    "query-rows": "engine.bench.query_rows",
    "transport": "workers.bench",
    "gateway": "server.bench",
    "llm": "workers.llm.bench",
    "diffusion": "workers.diffusion.bench",
    "chaos": "seedx.chaos.bench",
    "gpu-check": "seedx.gpu_check",
}


def run_bench(name: str, argv: list[str]) -> int:
    module_name = BENCHES.get(name)
    if module_name is None:
        print(f"unknown benchmark {name!r}; choose from {', '.join(sorted(BENCHES))}")
        return 2
    module = importlib.import_module(module_name)
    return int(module.main(argv) or 0)
