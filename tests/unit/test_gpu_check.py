"""``scripts/gpu-check.sh`` at toy size on the CPU: the GPU check of issue 15 cannot rot.

The script runs as it would on a lent GPU (same code, ``--dims tiny``): a fresh tree through
``seedx convert``, the diffusion worker vs the bare loop, batch scaling, the speed variants, the
reference LLM's per-layer figures, text-to-image through gateway + Redis + both workers, and the
placement planner's budgets against measured memory (a stand-in 1x80GB:h100 inventory). The
goals are GPU goals and are only reported here; what is asserted is that every section ran, that
the served image is byte-identical to the in-process one, so the ratio compares equal work, and
that the plan's weights are the loaded tensors' bytes (exact on the CPU: no allocator between).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_gpu_check_script_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    command = [str(ROOT / "scripts" / "gpu-check.sh"), "--dims", "tiny", "--out", str(out),
               "--work", str(tmp_path / "work")]  # fmt: skip
    if url := os.environ.get("SEEDX_TEST_REDIS_URL"):
        command += ["--redis-url", url.rsplit("/", 1)[0] + "/14"]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert report["meta"]["dims"] == "tiny"
    assert report["meta"]["device"] == "cpu"
    diffusion, llm, stack = (report["sections"][s] for s in ("diffusion", "llm", "stack"))
    assert set(diffusion["worker_vs_bare"]) == {"4", "8"}
    assert all(r["ratio"] > 0 for r in diffusion["worker_vs_bare"].values())
    assert set(diffusion["batches"]) == {"1", "4", "8"}
    assert diffusion["batches"]["1"]["peak_bytes"] is None  # CUDA only
    assert diffusion["fastest_variant"] in diffusion["variants"]
    assert all("seconds" in v for v in diffusion["variants"].values()), diffusion["variants"]
    load = report["sections"]["load"]
    assert load["jobs"] == 12
    assert set(load["policies"]) == {"batch", "step"}
    assert all(p["images_per_s"] > 0 for p in load["policies"].values())
    assert llm["layers"] == 2
    # A slope between two timings of a 1- and a 2-layer toy model: its sign on a busy CI CPU is
    # noise (it came out negative at load 4.5), its meaning is for a lent GPU at real width. Here
    # the check is that the section computes and reports it.
    assert math.isfinite(llm["decode_ms_per_token_per_layer"])
    assert llm["query_rows"]["max_abs_diff"] <= 1e-4
    assert stack["same_png_as_in_process"] is True
    assert stack["concurrency"]["requests"] == 8
    assert stack["concurrency"]["speedup"] > 0
    placement = report["sections"]["placement"]
    assert placement["inventory"].startswith("--gpus 1x80GB:h100")
    assert placement["dtype"] == "float32"
    detok, llm_weights = placement["diffusion:first_stage"], placement["llm:seed-x-i"]
    planned = placement["plan"]["diffusion:first_stage"]
    assert detok["planned"]["budget"] == planned["budget_bytes"]
    assert (detok["max_batch"], detok["size"]) == (4, "64x64")  # the profile's, as planned
    assert detok["measured"]["weights"] == detok["planned"]["weights"]  # header count = loaded
    assert detok["measured"]["context"] is None  # no CUDA context on the CPU
    activations = detok["measured"]["activations"]  # resident-set growth; None without clear_refs
    assert activations is None or activations > 0
    assert abs(llm_weights["ratio"]["weights"] - 1) < 1e-3  # + the rotary tables (buffers)
    assert isinstance(placement["released_plan"], dict)  # SEED-X-17B fits one 80 GB GPU
    names = {g["name"] for g in report["goals"]}
    assert "stack text-to-image / in-process" in names
    assert "per-image time, batch 8 / batch 1" in names
    assert "batch-level / step-level p99 end-to-end" in names
    assert "placement llm:seed-x-i weights, measured / planned" in names
    assert "goal" in done.stdout
    assert "met" in done.stdout
