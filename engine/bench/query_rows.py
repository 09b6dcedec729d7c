"""``seedx bench query-rows``: the 64 image-query rows in one pass vs the 65-step forced decode.

Both paths start from the same prefilled prompt (``{caption}<img>``, the SEED-X text-to-image
template, so ``<img>`` is the last prompt token and the block is forced at once). We time only
the block itself, from a fresh copy of the prompt's KV cache each repetition, and report the
ratio of medians and the max abs difference of the 64 final-norm rows. Goal (issue 2): ratio
<= 0.1, difference <= 1e-4 in fp32.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _load(model: Path | None, llm: str) -> tuple[object, Path | None]:
    from engine.checkpoint.convert import convert
    from engine.checkpoint.tiny import make_tiny
    from engine.runner import load_reference

    scratch = None
    if model is None:
        scratch = Path(tempfile.mkdtemp(prefix="seedx-bench-"))
        make_tiny(scratch / "tiny")
        convert(
            scratch / "tiny", scratch / "serving", models=[llm], dtype="float32", progress=False
        )
        model = scratch / "serving"
    return load_reference(model, llm, torch.float32, "cpu"), scratch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seedx bench query-rows", description=__doc__)
    parser.add_argument(
        "--model", type=Path, default=None, help="serving root (default: a fresh tiny checkpoint)"
    )
    parser.add_argument("--llm", default="seed-x")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--caption", default="a red cube on a wooden table")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from transformers import DynamicCache

    reference, _ = _load(args.model, args.llm)
    tok = reference.tokenizer  # type: ignore[attr-defined]
    ids = [tok.bos_id, *tok.encode_user_text(args.caption), tok.boi_id]
    with torch.no_grad():
        prompt_cache = DynamicCache()
        reference._forward(prompt_cache, embeds=reference.prompt_embeddings(ids, None))  # type: ignore[attr-defined]
        timings: dict[str, list[float]] = {"one_pass": [], "forced": []}
        rows: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for mode in ("one_pass", "forced"):
                cache = copy.deepcopy(prompt_cache)
                start = time.perf_counter()
                _, _, block_rows = reference._forced_block(cache, 0, 65, mode)  # type: ignore[attr-defined]
                timings[mode].append(time.perf_counter() - start)
                assert block_rows is not None
                rows[mode] = block_rows
    one = statistics.median(timings["one_pass"])
    forced = statistics.median(timings["forced"])
    diff = float((rows["one_pass"] - rows["forced"]).abs().max())
    print(
        f"model: {args.model or 'tiny (fresh)'} / {args.llm}, fp32, cpu, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats, prompt {len(ids)} tokens"
    )
    print(f"one-pass query rows (65 tokens, 1 forward): median {one * 1e3:8.2f} ms")
    print(f"forced decode       (65 forwards)         : median {forced * 1e3:8.2f} ms")
    print(f"ratio one-pass / forced: {one / forced:.3f}   (goal <= 0.1)")
    print(f"max abs difference of the 64 final-norm rows: {diff:.2e}   (goal <= 1e-4)")
    return 0
