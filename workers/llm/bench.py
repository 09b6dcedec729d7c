"""``seedx bench llm``: the LLM worker's engine wrapper against vLLM's offline ``LLM.generate``.

1. Aggregate output tokens/s at 1, 8 and 32 concurrent requests through
   :class:`~workers.llm.engine.SeedXLLMEngine` (the path the worker runs), divided by vLLM's
   offline ``LLM.generate`` on the same prompt ids and the same greedy, ``max_tokens``,
   ignore-EOS decoding (issue 4 goal: >= 0.9).
2. The image-query stage inside the same engine: the 64 query rows + ``</img>`` as one prefill
   of a resubmitted request (what the worker does) vs 65 forced decode steps (a logits processor
   forcing the ids), both from a prefix-cached prompt ending in ``<img>``, both with the row
   capture on; prints median wall times, their ratio and the max difference of the captured rows.

Runs on a fresh tiny checkpoint unless ``--model`` names a serving LLM folder. The two engines
run one after the other (never together), each with ``--gpu-memory-utilization`` of the device.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CONCURRENCY = (1, 8, 32)


def _tiny_folder() -> Path:
    from engine.checkpoint.convert import convert
    from engine.checkpoint.tiny import make_tiny

    scratch = Path(tempfile.mkdtemp(prefix="seedx-bench-llm-"))
    make_tiny(scratch / "tiny")
    convert(
        scratch / "tiny", scratch / "serving", models=["seed-x-i"], dtype="float32", progress=False
    )
    return scratch / "serving" / "seed-x-i"


def _prompts(folder: Path, count: int) -> list[tuple[int, ...]]:
    from engine.prompts import Turn, build_prompt, chat_template
    from engine.tokenizer import SeedXTokenizer

    tok = SeedXTokenizer(folder)
    return [
        build_prompt(tok, chat_template("seed-x-i", [Turn("user", f"Tell story number {i}.")])).ids
        for i in range(count)
    ]


async def _wrapper_rates(
    engine: Any, prompts: list[tuple[int, ...]], max_tokens: int
) -> dict[int, float]:
    from workers.llm.types import ChoiceFinished, LLMRequest, SamplingOptions

    async def one(tag: str, ids: tuple[int, ...]) -> int:
        request = LLMRequest(tag, ids, sampling=SamplingOptions(max_tokens=max_tokens))
        tokens = 0
        async for event in engine.generate(request):
            if isinstance(event, ChoiceFinished):
                tokens += len(event.output_ids)
        return tokens

    rates = {}
    for c in CONCURRENCY:
        await asyncio.gather(*(one(f"warm{c}-{i}", p) for i, p in enumerate(prompts[:c])))
        start = time.perf_counter()
        tokens = await asyncio.gather(*(one(f"b{c}-{i}", p) for i, p in enumerate(prompts[:c])))
        rates[c] = sum(tokens) / (time.perf_counter() - start)
    return rates


async def _query_stage(engine: Any, repeats: int) -> tuple[float, float, float]:
    from vllm import SamplingParams

    from engine.prompts import build_prompt, text_to_image_template
    from engine.vllm_plugin.capture import capture_args
    from engine.vllm_plugin.rules import rules_args
    from workers.llm.engine import _VllmSegments

    ids = engine.ids
    block = list(ids.image_sequence[1:])
    times: dict[str, list[float]] = {"one_pass": [], "forced": []}
    diffs = []
    for r in range(repeats):
        prompt = list(
            build_prompt(engine.tokenizer, text_to_image_template("seed-x", f"a cube {r}")).ids
        )
        segments = _VllmSegments(engine, f"q{r}", (), [])
        warm = SamplingParams(max_tokens=1, detokenize=False)
        async for _ in segments.stream(f"q{r}-warm", prompt, warm):
            pass
        rows = {}
        for mode in ("one_pass", "forced"):
            key = f"{mode}-{r}"
            if mode == "one_pass":
                request_ids, extra = prompt + block, capture_args(key, len(prompt))
                params = SamplingParams(max_tokens=1, detokenize=False, extra_args=extra)
            else:
                extra = {**capture_args(key, len(prompt)), **rules_args(force_ids=block)}
                request_ids = prompt
                params = SamplingParams(max_tokens=len(block), detokenize=False, extra_args=extra)
            start = time.perf_counter()
            async for _ in segments.stream(f"q{r}-{mode}", request_ids, params):
                pass
            times[mode].append(time.perf_counter() - start)
            rows[mode] = (await segments.take_image(key, prompt + block))[0]
        diffs.append(float((rows["one_pass"] - rows["forced"]).abs().max()))
    return statistics.median(times["one_pass"]), statistics.median(times["forced"]), max(diffs)


def _offline_rates(
    folder: Path, prompts: list[tuple[int, ...]], max_tokens: int, args: Any
) -> dict[int, float]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from engine.vllm_plugin.ids import token_ids_for

    llm = LLM(
        model=str(folder),
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_bytes=args.kv_cache_bytes,
        skip_tokenizer_init=True,
        max_model_len=2048,
        max_num_seqs=64,
    )
    eos = token_ids_for(str(folder)).eos
    params = SamplingParams(
        temperature=0,
        max_tokens=max_tokens,
        ignore_eos=True,
        stop_token_ids=[eos],
        detokenize=False,
    )
    rates = {}
    for c in CONCURRENCY:
        batch = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts[:c]]
        llm.generate(batch, params, use_tqdm=False)
        start = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        rates[c] = sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)
    llm.llm_engine.engine_core.shutdown()
    return rates


async def _engine_part(
    folder: Path, prompts: list[tuple[int, ...]], args: Any
) -> tuple[dict[int, float], tuple[float, float, float]]:
    from workers.llm.engine import EngineConfig, SeedXLLMEngine

    config = EngineConfig(
        folder,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_bytes=args.kv_cache_bytes,
        max_num_seqs=64,
    )
    engine = await SeedXLLMEngine.start(config)
    try:
        rates = await _wrapper_rates(engine, prompts, args.max_tokens)
        stage = await _query_stage(engine, args.repeats)
    finally:
        engine.shutdown()
    return rates, stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seedx bench llm", description=__doc__)
    parser.add_argument(
        "--model", type=Path, default=None, help="serving LLM folder (default: tiny)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="image-query stage repetitions")
    parser.add_argument(
        "--dtype", default="float32", help="vLLM dtype ('auto' turns an fp32 checkpoint into bf16)"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.15)
    parser.add_argument(
        "--kv-cache-bytes",
        type=int,
        default=None,
        help="explicit KV cache size (overrides the utilization; steadier on CPU hosts)",
    )
    parser.add_argument("--enforce-eager", action="store_true", default=True)
    args = parser.parse_args(argv)
    folder = args.model or _tiny_folder()
    prompts = _prompts(folder, max(CONCURRENCY))
    rates, (one, forced, diff) = asyncio.run(_engine_part(folder, prompts, args))
    offline = _offline_rates(folder, prompts, args.max_tokens, args)
    print(f"model {folder}, dtype {args.dtype}, {args.max_tokens} greedy tokens per request")
    print("concurrency  wrapper tok/s  offline LLM.generate tok/s  ratio (goal >= 0.9)")
    for c in CONCURRENCY:
        print(f"{c:>11}  {rates[c]:>13.1f}  {offline[c]:>26.1f}  {rates[c] / offline[c]:>5.2f}")
    print(f"image-query stage, one prefill pass : median {one * 1e3:8.2f} ms")
    print(f"image-query stage, 65 forced decodes: median {forced * 1e3:8.2f} ms")
    print(f"ratio one-pass / forced: {one / forced:.3f}; max |rows difference| {diff:.2e}")
    return 0
