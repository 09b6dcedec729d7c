"""The vLLM worker path against the original SEED-X code (issue 14).

The goldens' LLM cases (chat with one and two any-res images, text-to-image where the model
opens two images itself, a prompt ending in ``<img>``, an edit on the seed-x-edit folder with
its 1x1 grid) go through ``SeedXLLMEngine`` on ``seedx convert`` of the oracle's tree: generated
ids must equal the original's exactly, query rows and visual embeddings within 1e-5.
"""

from __future__ import annotations

import torch

from engine.parity import Golden
from workers.llm.parity import run_vllm_parity


def test_vllm_engine_matches_the_original_code() -> None:
    golden = Golden.load()
    report = run_vllm_parity(golden, torch.float32)
    failures = report.failures()
    assert not failures, "\n".join(f"{r.quantity}: {r.max_abs:.3g} > {r.bound}" for r in failures)
    ids_rows = [r for r in report.rows if "generated ids" in r.quantity]
    assert len(ids_rows) == len(golden.cases["llm"])
    assert sum("image-query states" in r.quantity for r in report.rows) == 3
