"""Parity of the vLLM worker path with the original SEED-X code (issue 14), and
``seedx bench parity``.

:mod:`engine.parity` compares the PyTorch reference with the goldens the original repository
computed; this module sends the same prompts (same ids, same PIL images) through
:class:`workers.llm.engine.SeedXLLMEngine`, the engine the LLM worker serves with, and compares
its generated ids exactly and its 64 image-query rows and visual embeddings within the same
bound. It lives in ``workers`` because ``engine`` never imports the worker side.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from engine.parity import (
    DTYPE_NAMES,
    GOLDEN_DIR,
    MODEL_OF_FOLDER,
    Golden,
    ParityReport,
    _Comparer,
    convert_golden_tree,
    run_parity,
    tolerance,
)

_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


async def _run_folder(
    golden: Golden, folder: Path, cases: list[dict[str, Any]], dtype: torch.dtype, cmp: _Comparer
) -> None:
    from workers.llm.engine import EngineConfig, SeedXLLMEngine
    from workers.llm.types import ChoiceFinished, ImageEmbedding, LLMRequest, SamplingOptions

    config = EngineConfig(
        folder, dtype=DTYPE_NAMES[dtype], enforce_eager=True, kv_cache_bytes=256 << 20
    )
    engine = await SeedXLLMEngine.start(config)
    try:
        for case in cases:
            name = case["case"]
            request = LLMRequest(
                f"parity-{name}-{time.monotonic_ns()}",
                tuple(case["prompt_ids"]),
                tuple(golden.image(n) for n in case["images"]),
                SamplingOptions(max_tokens=case["max_new_tokens"]),
            )
            ids: list[int] = []
            images: list[ImageEmbedding] = []
            async for event in engine.generate(request):
                if isinstance(event, ChoiceFinished):
                    ids = list(event.output_ids)
                elif isinstance(event, ImageEmbedding):
                    images.append(event)
            cmp.ids(f"vLLM {name}: generated ids ({len(case['output_ids'])})", ids,
                    case["output_ids"])  # fmt: skip
            if case["num_images"]:
                exp = golden.expected
                if len(images) != case["num_images"]:
                    cmp.ids(f"vLLM {name}: images emitted", [len(images)], [case["num_images"]])
                    continue
                rows = torch.stack([i.query_hidden for i in images])
                feats = torch.stack([i.embedding for i in images])
                cmp.tensors(f"vLLM {name}: 64 image-query states x{len(rows)}", rows,
                            exp[f"llm.{name}.query_hidden"], "llm")  # fmt: skip
                cmp.tensors(f"vLLM {name}: output resampler features", feats,
                            exp[f"llm.{name}.image_features"], "llm")  # fmt: skip
    finally:
        engine.shutdown()


def run_vllm_parity(
    golden: Golden | None = None, dtype: torch.dtype = torch.float32, serving: Path | None = None
) -> ParityReport:
    """The golden LLM cases through the vLLM engine, one engine per model folder."""
    golden = golden or Golden.load()
    report = ParityReport(dtype)
    cmp = _Comparer(report, tolerance(dtype))
    with tempfile.TemporaryDirectory(prefix="seedx-parity-vllm-") as tmp:
        root = serving or convert_golden_tree(golden, Path(tmp) / "serving", DTYPE_NAMES[dtype])
        by_folder: dict[str, list[dict[str, Any]]] = {}
        for case in golden.cases["llm"]:
            by_folder.setdefault(case["folder"], []).append(case)
        for folder, cases in sorted(by_folder.items()):
            asyncio.run(_run_folder(golden, root / MODEL_OF_FOLDER[folder], cases, dtype, cmp))
    return report


def main(argv: list[str] | None = None) -> int:
    """``seedx bench parity``: prints quantity, max-abs diff, bound; exit 1 on any failure."""
    parser = argparse.ArgumentParser(
        prog="seedx bench parity",
        description="This project against the original SEED-X code on the committed goldens "
        "(tests/golden/parity, docs/parity.md): one row per quantity.",
    )
    parser.add_argument("--golden", type=Path, default=GOLDEN_DIR, help="golden folder")
    parser.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default="float32",
        help="the project's dtype; float16 measures the serving bound",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=["tokenizer", "anyres", "llm", "detokenizer"],
        help="run only these parts of the reference comparison (repeatable)",
    )
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM worker path")
    args = parser.parse_args(argv)

    if not (args.golden / "cases.json").is_file():
        print(
            f"no parity goldens in {args.golden}: run from a clone of the repository "
            "(tests/golden/parity) or pass --golden DIR"
        )
        return 2
    started = time.perf_counter()
    golden = Golden.load(args.golden)
    dtype = _DTYPES[args.dtype]
    report = run_parity(golden, dtype=dtype, only=set(args.only) if args.only else None)
    if not args.no_vllm:
        report.rows += run_vllm_parity(golden, dtype).rows
    kernels = torch.backends.cpu.get_cpu_capability()  # ATEN_CPU_CAPABILITY picks another
    print(
        f"parity with {golden.cases['source']}, project in {args.dtype} on CPU ({kernels} kernels)"
    )
    print(report.table())
    failed = report.failures()
    took = time.perf_counter() - started
    print(f"{len(report.rows) - len(failed)}/{len(report.rows)} rows within bound ({took:.0f} s)")
    return 1 if failed else 0
