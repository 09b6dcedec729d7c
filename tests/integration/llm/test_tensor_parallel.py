"""Tensor parallelism on vLLM's CPU backend: TP=2 against TP=1 (issue 23 item 3), and which
layers vLLM's online fp8 takes when it builds the real model class (item 3's fp8 scope).

vLLM's CPU backend runs TP with one worker process per rank and gloo collectives, through the
same code a GPU host runs (``VocabParallelEmbedding``, QKV/MLP column- and row-parallel layers,
the all-reduces, ``ParallelLMHead`` with the logits gathered and the vocabulary padding cut off,
the multiprocessing executor, ``collective_rpc`` to every rank). On the tiny fp32 checkpoint the
TP=2 engine must give the TP=1 engine's greedy ids and query rows (within 1e-5), every rank must
hold the same rows (``capture_every_rank``), and only rank 0 must answer for them.

vLLM binds each CPU rank's threads to a NUMA node of its own unless told which cores to use, so
the TP=2 engine gets ``VLLM_CPU_OMP_THREADS_BIND`` with the allowed CPUs split in two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.prompts import build_prompt, edit_template, text_to_image_template
from tests.integration.llm.conftest import EngineThread
from tests.integration.llm.helpers import Collected, chat_case, collect, noise_image, request_id
from workers.llm.types import LLMRequest, SamplingOptions

ROW_TOL = 1e-5
EMBED_TOL = 1e-5


def _split_cpus() -> str | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return "|".join(",".join(map(str, part)) for part in (cpus[:half], cpus[half:]))


@pytest.fixture(scope="module")
def tp2_engine(llm_folder: Path, engine_loop: EngineThread) -> Iterator[Any]:
    from workers.llm.engine import EngineConfig, SeedXLLMEngine

    binding = _split_cpus()
    if binding is None:
        pytest.skip("TP=2 on the CPU needs two CPUs")
    config = EngineConfig(
        llm_folder,
        dtype="float32",
        enforce_eager=True,
        kv_cache_bytes=256 << 20,
        enable_mm_embeds=True,
        tensor_parallel_size=2,
        capture_every_rank=True,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_CPU_OMP_THREADS_BIND", binding)
        engine = engine_loop.run(SeedXLLMEngine.start(config), timeout=400)
    yield engine

    async def shutdown() -> None:
        # Inside the loop, so vLLM cancels its output handler before that handler can see the
        # engine core gone (from another thread it logs a spurious EngineDeadError).
        engine.shutdown()

    engine_loop.run(shutdown(), timeout=60)


def _cases(engine: Any, reference: Any) -> list[LLMRequest]:
    chat, _, _ = chat_case(
        engine, reference, [noise_image(1344, 896, seed=1)], "Describe the image.", 24
    )
    generate = LLMRequest(
        request_id("tp-generate"),
        build_prompt(engine.tokenizer, text_to_image_template("seed-x-i", "a cat in a hat")).ids,
        (),
        SamplingOptions(max_tokens=90),
        image_required=True,
    )
    edit = LLMRequest(
        request_id("tp-edit"),
        build_prompt(engine.tokenizer, edit_template("make the sky green")).ids,
        (noise_image(640, 480, seed=5),),
        SamplingOptions(max_tokens=100),
        image_required=True,
    )
    return [chat, generate, edit]


def _run_all(engine: Any, loop: EngineThread, requests: list[LLMRequest]) -> list[Collected]:
    async def fresh(request: LLMRequest) -> Collected:
        # A fresh request id per engine; the content (and so the rows' key) is the same.
        return await collect(engine, dataclasses.replace(request, request_id=request_id("tp")))

    return [loop.run(fresh(r), timeout=300) for r in requests]


@pytest.fixture(scope="module")
def both(
    llm_engine: Any, tp2_engine: Any, engine_loop: EngineThread, reference: Any
) -> tuple[list[Collected], list[Collected]]:
    requests = _cases(llm_engine, reference)
    return _run_all(llm_engine, engine_loop, requests), _run_all(tp2_engine, engine_loop, requests)


def test_tp2_greedy_ids_and_query_rows_match_tp1(
    both: tuple[list[Collected], list[Collected]], llm_folder: Path
) -> None:
    # The tiny vocabulary (1330) is no multiple of 64, as SEED-X's 32330 is not: vLLM pads the
    # embedding and lm_head to 1344 rows, 672 per rank, and cuts the padding off the logits.
    assert json.loads((llm_folder / "config.json").read_text())["vocab_size"] % 64
    tp1, tp2 = both
    worst_rows = worst_embed = 0.0
    images = 0
    for one, two in zip(tp1, tp2, strict=True):
        assert two.output_ids == one.output_ids
        assert len(two.images) == len(one.images)
        for a, b in zip(one.images, two.images, strict=True):
            assert a.position == b.position
            worst_rows = max(worst_rows, float((a.query_hidden - b.query_hidden).abs().max()))
            worst_embed = max(worst_embed, float((a.embedding - b.embedding).abs().max()))
            images += 1
    assert images == 2  # the generation's and the edit's
    print(
        f"\nTP=2 vs TP=1: max |rows| diff {worst_rows:.3g}, max |embedding| diff {worst_embed:.3g}"
    )
    assert worst_rows <= ROW_TOL
    assert worst_embed <= EMBED_TOL


def test_tp2_ranks_hold_identical_rows_and_rank0_alone_answers(
    both: tuple[list[Collected], list[Collected]], tp2_engine: Any, engine_loop: EngineThread
) -> None:
    async def rpc(method: str, *args: Any) -> list[Any]:
        return await tp2_engine.llm.collective_rpc(method, args=args)  # type: ignore[no-any-return]

    digests = engine_loop.run(rpc("seedx_row_digests"))
    assert len(digests) == 2  # one answer per rank
    assert digests[0]
    assert digests[0] == digests[1]  # bit for bit: the all-reduced states agree
    key = next(iter(digests[0]))
    answers = engine_loop.run(rpc("seedx_take_images", [key]))
    assert answers[1] is None
    assert answers[0] is not None
    assert answers[0][0] is not None


def test_tp2_concurrent_requests_match_one_at_a_time(
    both: tuple[list[Collected], list[Collected]],
    tp2_engine: Any,
    engine_loop: EngineThread,
    reference: Any,
) -> None:
    _, alone = both
    requests = _cases(tp2_engine, reference)

    async def together() -> list[Collected]:
        return list(
            await asyncio.gather(
                *(
                    collect(tp2_engine, dataclasses.replace(r, request_id=request_id("tpc")))
                    for r in requests
                )
            )
        )

    for a, b in zip(alone, engine_loop.run(together(), timeout=300), strict=True):
        assert a.output_ids == b.output_ids
        for x, y in zip(a.images, b.images, strict=True):
            assert torch.allclose(x.query_hidden, y.query_hidden, atol=ROW_TOL, rtol=0)


FP8_PROBE = """
import json, socket, sys
from collections import Counter
from pathlib import Path

from vllm.config import set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel

from engine.vllm_plugin.model import SeedXForCausalLM
from workers.llm.engine import EngineConfig

config = EngineConfig(
    Path(sys.argv[1]), dtype="bfloat16", quantization="fp8", enforce_eager=True,
    kv_cache_bytes=64 << 20,
).engine_args().create_engine_config()
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
with set_current_vllm_config(config):
    init_distributed_environment(
        world_size=1, rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}",
        local_rank=0, backend="gloo",
    )
    initialize_model_parallel(1)
    model = SeedXForCausalLM(vllm_config=config)
methods = Counter(
    f"{name.split('.')[0]} {type(m).__name__} {type(m.quant_method).__name__}"
    for name, m in model.named_modules()
    if getattr(m, "quant_method", None) is not None
)
print(json.dumps({"quantization": config.model_config.quantization, "methods": methods}))
"""


def test_online_fp8_takes_the_trunk_linears_only(llm_folder: Path) -> None:
    """The real ``SeedXForCausalLM`` built (not loaded: the CPU has no fp8 kernels to run it)
    under the worker's fp8 engine arguments, in a child process (it sets up vLLM's parallel
    state): every trunk linear layer gets vLLM's online fp8 method, the embedding and lm_head
    stay 16-bit, and no encoder module gets any quantization method."""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", FP8_PROBE, str(llm_folder)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["quantization"] == "fp8_per_tensor"
    layers = 2  # the tiny trunk
    assert found["methods"] == {
        "language_model QKVParallelLinear Fp8PerTensorOnlineLinearMethod": layers,
        "language_model RowParallelLinear Fp8PerTensorOnlineLinearMethod": 2 * layers,
        "language_model MergedColumnParallelLinear Fp8PerTensorOnlineLinearMethod": layers,
        "language_model VocabParallelEmbedding UnquantizedEmbeddingMethod": 1,
        "language_model ParallelLMHead UnquantizedEmbeddingMethod": 1,
    }
