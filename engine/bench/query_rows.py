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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class QueryRowTiming:
    """Median seconds of the image block both ways, and how far their 64 rows differ."""

    prompt_tokens: int
    one_pass_s: float
    forced_s: float
    max_abs_diff: float

    @property
    def ratio(self) -> float:
        return self.one_pass_s / self.forced_s


def time_query_rows(reference: Any, caption: str, repeats: int) -> QueryRowTiming:
    """Times the 65 forced tokens after ``{caption}<img>`` in one pass and as 65 decode steps,
    each from a fresh copy of the prompt's KV cache (CUDA synchronised around every block)."""
    from transformers import DynamicCache

    tok = reference.tokenizer
    ids = [tok.bos_id, *tok.encode_user_text(caption), tok.boi_id]
    cuda = reference.device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    with torch.no_grad():
        prompt_cache = DynamicCache()
        reference._forward(prompt_cache, embeds=reference.prompt_embeddings(ids, None))
        timings: dict[str, list[float]] = {"one_pass": [], "forced": []}
        rows: dict[str, torch.Tensor] = {}
        for _ in range(repeats + 1):  # the first round warms both paths up
            for mode in ("one_pass", "forced"):
                cache = copy.deepcopy(prompt_cache)
                start = now()
                _, _, block_rows = reference._forced_block(cache, 0, 65, mode)
                timings[mode].append(now() - start)
                assert block_rows is not None
                rows[mode] = block_rows
    diff = float((rows["one_pass"].float() - rows["forced"].float()).abs().max())
    return QueryRowTiming(
        len(ids),
        statistics.median(timings["one_pass"][1:]),
        statistics.median(timings["forced"][1:]),
        diff,
    )


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

    reference, _ = _load(args.model, args.llm)
    timing = time_query_rows(reference, args.caption, args.repeats)
    print(
        f"model: {args.model or 'tiny (fresh)'} / {args.llm}, fp32, cpu, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats, "
        f"prompt {timing.prompt_tokens} tokens"
    )
    print(f"one-pass query rows (65 tokens, 1 forward): median {timing.one_pass_s * 1e3:8.2f} ms")
    print(f"forced decode       (65 forwards)         : median {timing.forced_s * 1e3:8.2f} ms")
    print(f"ratio one-pass / forced: {timing.ratio:.3f}   (goal <= 0.1)")
    print(
        f"max abs difference of the 64 final-norm rows: {timing.max_abs_diff:.2e}   (goal <= 1e-4)"
    )
    return 0
