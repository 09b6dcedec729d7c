"""``seedx bench gpu-check`` (``scripts/gpu-check.sh``): speed and memory at SEED-X's real size.

One prepared command for a lent GPU (issue 15), and the same code at toy size on the CPU in CI so
it cannot rot between draws. It writes a random-weight tree (``--dims real``: the real SDXL
UNet/VAE and de-tokenizer, the LLM at real width with ``--llm-layers`` layers, one ViT layer since
text-to-image never runs the ViT; ``--dims tiny``: the toy tree), converts it with
``seedx convert`` and measures, printing a table and writing JSON (``--out``):

* **diffusion**: the diffusion worker (Redis, worker loop, batching, PNG) ÷ the bare engine loop
  on the same jobs at each ``--steps`` (goal <= 1.03); per-image time at batch 4 and 8 ÷ batch 1
  (goal <= 0.6 at 8) with the peak CUDA memory of each batch size; the speed variants the worker
  offers (SDPA, channels-last, ``torch.compile``), one denoising run each, and the fastest.
* **load**: batch-level vs step-level batching (issue 25) on one seeded Poisson trace of
  ``load_jobs`` generate jobs at load 0.7 of the worker's measured capacity, at the first
  ``--steps`` (``workers.diffusion.load_bench``): p50/p99 queue wait in step times, p50/p99
  end-to-end, images/s; goals: step-level p99 wait <= 1.5 steps, images/s not below batch-level,
  p99 end-to-end >= 1.5x better.
* **llm**: the PyTorch reference at 13B width: prefill ms/token, decode ms/token per layer (the
  model run with all and with half of its layers; the difference is the layers' share) and the
  figures scaled to 40 layers; the 64 image-query rows in one pass vs the 65-step forced decode.
* **stack**: text-to-image through the gateway (ASGI), Redis, the LLM worker's job handler on the
  reference (``workers.llm.reference_engine``: vLLM cannot be carried to the GPU machine) and the
  diffusion worker, ÷ the same work in process (same prompt, reference, float16 embedding,
  de-tokenizer, PNG: the served PNG must be byte-identical; goal <= 1.05), and images/s with
  ``--concurrency`` requests at once ÷ one at a time (goal >= 3).
* **placement**: the placement planner's memory budgets against measured memory
  (``seedx/gpu_check_placement.py``): a plan for the detected GPUs (a stand-in ``1x80GB:h100`` on
  the CPU) at the check's image size and ``max_batch``; the de-tokenizer loaded at the plan's
  settings and run on one batch, its peak (CUDA context + torch's reserved peak) ÷ its budget
  (goal 1 ± 0.1); the reference LLM's measured weights ÷ the plan's LLM weights.

Timings are the best of ``--repeats`` (noise only adds time); a section that fails is reported
with its error and the others still run; the exit status is 1 if any failed. Goals are reported,
not asserted: the CPU run proves the script works, only a GPU run says whether a goal is met.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MODEL = "seed-x-i"
API_KEY = "gpu-check-key-0123"


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: ``real`` for a GPU, ``tiny`` for the CPU (CI)."""

    size: int
    steps: tuple[int, ...]
    jobs: int
    max_batch: int
    batches: tuple[int, ...]
    prefill_tokens: int
    decode_tokens: int
    image_max_tokens: int
    concurrency: int
    variants: tuple[str, ...]
    load_jobs: int = 16  # jobs of the load section's Poisson trace


PROFILES = {
    "real": Profile(
        1024, (25, 50), 4, 4, (1, 4, 8), 512, 32, 120, 16, ("sdpa", "channels_last", "compile")
    ),
    "tiny": Profile(
        64, (4, 8), 4, 4, (1, 4, 8), 64, 16, 80, 8, ("sdpa", "channels_last"), load_jobs=12
    ),
}


@dataclass
class Report:
    """What the run found: figures per section, goals, errors."""

    meta: dict[str, Any]
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    goals: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def goal(self, name: str, value: float, op: str, target: float) -> None:
        """``op``: ``<=``, ``>=``, or ``within`` (a ratio in 1 ± ``target``)."""
        if op == "within":
            met, text = abs(value - 1) <= target, f"1 ± {target}"
        else:
            met = value <= target if op == "<=" else value >= target
            text = f"{op} {target}"
        self.goals.append({"name": name, "value": value, "goal": text, "met": met})

    def as_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "sections": self.sections,
            "goals": self.goals,
            "errors": self.errors,
        }


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="seedx bench gpu-check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dims",
        choices=sorted(PROFILES),
        default=None,
        help="real (default on CUDA) or tiny (default on CPU)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="JSON report path")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--model", type=Path, help="an existing serving root (skip writing one)")
    parser.add_argument("--llm-layers", type=int, default=4, help="--dims real: LLM layers")
    parser.add_argument("--sections", default="diffusion,load,placement,llm,stack")
    parser.add_argument("--size", type=int, help="image side (default: per --dims)")
    parser.add_argument("--steps", help="comma-separated step counts (default: per --dims)")
    parser.add_argument("--variants", help="comma-separated: sdpa,channels_last,compile")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--redis-url", help="Redis/Valkey URL (default: an embedded Valkey)")
    return parser.parse_args(argv)


def _profile(args: argparse.Namespace, device: torch.device) -> Profile:
    dims = args.dims or ("real" if device.type == "cuda" else "tiny")
    args.dims = dims
    base = PROFILES[dims]
    overrides: dict[str, Any] = {}
    if args.size:
        overrides["size"] = args.size
    if args.steps:
        overrides["steps"] = tuple(int(s) for s in args.steps.split(","))
    if args.variants:
        overrides["variants"] = tuple(v for v in args.variants.split(",") if v)
    if args.concurrency:
        overrides["concurrency"] = args.concurrency
    return Profile(**{**base.__dict__, **overrides})


class Clock:
    """Wall time with the device synchronised, so queued GPU kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


# -- the checkpoint -------------------------------------------------------------------------


def prepare_tree(args: argparse.Namespace, work: Path, device: torch.device) -> Path:
    """Writes and converts the random-weight tree; returns the serving root."""
    from engine.checkpoint.convert import convert

    dtype = "float16" if device.type == "cuda" else "float32"
    if args.dims == "tiny":
        from engine.checkpoint.tiny import make_tiny

        released = make_tiny(work / "released")
    else:
        from engine.checkpoint.real_dims import RealDims, make_real

        dims = RealDims(
            llm_layers=args.llm_layers,
            vit_layers=1,
            models=(MODEL,),
            dtype=getattr(torch, dtype),
            device=str(device),
        )
        released = make_real(work / "released", dims, progress=True)
    convert(released, work / "serving", models=[MODEL], dtype=dtype, progress=False)
    return work / "serving"


# -- diffusion ------------------------------------------------------------------------------


def _load_pipeline(root: Path, device: torch.device, **speed: Any) -> Any:
    from workers.diffusion.settings import DiffusionWorkerSettings
    from workers.diffusion.worker import load_pipeline

    settings = DiffusionWorkerSettings(model=root, device=str(device), **speed)
    return load_pipeline(settings)


def check_diffusion(
    report: Report, root: Path, profile: Profile, args: argparse.Namespace, redis_url: str
) -> None:
    from engine.sampling import SamplingOptions
    from workers.diffusion import bench
    from workers.diffusion.device_thread import DeviceThread

    device = torch.device(report.meta["device"])
    thread = DeviceThread()  # the worker's torch work and the bare loop's, on one thread alike
    pipeline = thread.call(_load_pipeline, root, device)
    embeds = thread.call(bench.random_embeddings, pipeline, profile.jobs)
    section: dict[str, Any] = {
        "size": profile.size,
        "jobs": profile.jobs,
        "max_batch": profile.max_batch,
        "worker_vs_bare": {},
    }
    report.sections["diffusion"] = section
    for steps in profile.steps:
        options = SamplingOptions(profile.size, profile.size, steps)

        def bare(options: SamplingOptions = options, pipeline: Any = pipeline) -> float:
            return bench.bare_loop(pipeline, embeds, options, profile.max_batch)

        thread.call(bare)  # warm: this step count's scheduler tables, first-call kernels
        bare_times, worker_times = asyncio.run(
            bench.worker_runs(
                pipeline,
                embeds,
                root,
                redis_url,
                bare,
                thread,
                size=profile.size,
                steps=steps,
                max_batch=profile.max_batch,
                repeats=args.repeats,
            )
        )
        ratio = min(worker_times) / min(bare_times)
        section["worker_vs_bare"][str(steps)] = {
            "bare_s": min(bare_times),
            "worker_s": min(worker_times),
            "ratio": ratio,
            "per_image_s": min(bare_times) / profile.jobs,
        }
        report.goal(f"diffusion worker / bare loop, {steps} steps", ratio, "<=", 1.03)

    options = SamplingOptions(profile.size, profile.size, profile.steps[0])
    timings = thread.call(
        bench.per_image, pipeline, embeds[0], options, profile.batches, args.repeats
    )
    thread.close()
    one = timings[profile.batches[0]].seconds
    section["batches"] = {
        str(b): {"per_image_s": t.seconds, "ratio": t.seconds / one, "peak_bytes": t.peak_bytes}
        for b, t in timings.items()
    }
    last = profile.batches[-1]
    report.goal(f"per-image time, batch {last} / batch 1", timings[last].seconds / one, "<=", 0.6)
    del pipeline, bare  # the closure holds the pipeline too
    _free(device)
    section["variants"] = _variants(root, device, embeds[0], options, profile, Clock(device))
    fastest = min(section["variants"].items(), key=lambda kv: kv[1].get("seconds", float("inf")))
    section["fastest_variant"] = fastest[0]


LOAD = 0.7  # issue 25's offered load, relative to the measured capacity


def check_load(report: Report, root: Path, profile: Profile, args: argparse.Namespace) -> None:
    """Batch-level vs step-level batching on one Poisson trace (module docstring)."""
    from engine.sampling import SamplingOptions
    from workers.diffusion import bench
    from workers.diffusion.device_thread import DeviceThread
    from workers.diffusion.load_bench import run_load_bench
    from workers.diffusion.load_model import figures
    from workers.diffusion.settings import DiffusionWorkerSettings

    device = torch.device(report.meta["device"])
    settings = DiffusionWorkerSettings(model=root, max_batch=profile.max_batch)
    options = SamplingOptions(profile.size, profile.size, profile.steps[0])
    with DeviceThread() as thread:  # every torch call of the bench on one thread, as the worker
        pipeline = thread.call(_load_pipeline, root, device)
        embeds = thread.call(bench.random_embeddings, pipeline, profile.load_jobs)
        capacity, results = run_load_bench(
            pipeline, settings, embeds, options, LOAD, 0, thread, repeats=args.repeats
        )
    by = {r.policy: figures(r) for r in results}
    report.sections["load"] = {
        "load": LOAD,
        "jobs": profile.load_jobs,
        "steps": profile.steps[0],
        "capacity_images_per_s": capacity.images_per_s,
        "step_s": capacity.step_s,
        "policies": {
            policy: {
                "wait_steps_p50": f.wait_p50,
                "wait_steps_p99": f.wait_p99,
                "e2e_s_p50": f.e2e_p50,
                "e2e_s_p99": f.e2e_p99,
                "images_per_s": f.images_per_s,
            }
            for policy, f in by.items()
        },
    }
    step, batch = by["step"], by["batch"]
    report.goal("step-level p99 queue wait (step times)", step.wait_p99, "<=", 1.5)
    report.goal("step-level / batch-level images/s", step.images_per_s / batch.images_per_s,
                ">=", 1.0)  # fmt: skip
    report.goal("batch-level / step-level p99 end-to-end", batch.e2e_p99 / step.e2e_p99,
                ">=", 1.5)  # fmt: skip
    del pipeline
    _free(device)


def _variants(
    root: Path,
    device: torch.device,
    embed: Any,
    options: Any,
    profile: Profile,
    clock: Clock,
) -> dict[str, dict[str, Any]]:
    """One batch-1 denoising run per speed option, each on a freshly loaded pipeline as the
    worker would start with it; compile's first call (its compile time) is reported apart."""
    from engine.pipeline_inputs import GenerateJob

    speeds = {"sdpa": {}, "channels_last": {"channels_last": True}, "compile": {"compile": True}}
    tensor = torch.from_numpy(embed.astype("float32"))[None]
    found: dict[str, dict[str, Any]] = {}
    for name in profile.variants:
        try:
            pipeline = _load_pipeline(root, device, **speeds[name])
            jobs = pipeline.prepare_generate([GenerateJob(tensor, seed=0)])
            started = clock()
            pipeline.sample(jobs, options)
            first = clock() - started
            runs = []
            for _ in range(2):
                started = clock()
                pipeline.sample(jobs, options)
                runs.append(clock() - started)
            found[name] = {"seconds": min(runs), "first_call_s": first}
            del pipeline
            _free(device)
        except Exception as exc:  # a variant the host cannot run is a finding, not a crash
            found[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- the reference LLM ----------------------------------------------------------------------


def check_llm(report: Report, reference: Any, profile: Profile, args: argparse.Namespace) -> None:
    from engine.bench.query_rows import time_query_rows

    clock = Clock(reference.device)
    layers = reference.llm.model.layers
    total = len(layers)
    counts = sorted({total, max(1, total // 2)})
    per_count = {n: _prefill_decode(reference, n, profile, clock) for n in counts}
    section: dict[str, Any] = {
        "layers": total,
        "hidden": reference.llm.config.hidden_size,
        "dtype": str(reference.dtype),
        "by_layers": {str(n): v for n, v in per_count.items()},
    }
    if len(counts) == 2:
        low, high = counts
        for key in ("prefill_ms_per_token", "decode_ms_per_token"):
            slope = (per_count[high][key] - per_count[low][key]) / (high - low)
            fixed = per_count[high][key] - high * slope
            section[f"{key}_per_layer"] = slope
            section[f"{key}_40_layers"] = fixed + 40 * slope
    else:  # one layer: no difference to take, the whole model's figure stands
        for key in ("prefill_ms_per_token", "decode_ms_per_token"):
            section[f"{key}_per_layer"] = per_count[total][key]
    rows = time_query_rows(reference, "a red cube on a wooden table", max(3, args.repeats))
    section["query_rows"] = {
        "one_pass_ms": rows.one_pass_s * 1e3,
        "forced_ms": rows.forced_s * 1e3,
        "ratio": rows.ratio,
        "max_abs_diff": rows.max_abs_diff,
    }
    report.sections["llm"] = section
    report.goal("query rows one pass / forced decode", rows.ratio, "<=", 0.1)


def _prefill_decode(
    reference: Any, layers: int, profile: Profile, clock: Clock
) -> dict[str, float]:
    """Prefill and decode ms/token with the first ``layers`` decoder layers only."""
    from transformers import DynamicCache

    model = reference.llm.model
    all_layers, config_layers = model.layers, model.config.num_hidden_layers
    model.layers = torch.nn.ModuleList(list(all_layers)[:layers])
    model.config.num_hidden_layers = layers
    try:
        g = torch.Generator().manual_seed(0)
        vocab = reference.llm.config.vocab_size
        prompt = torch.randint(3, vocab, (profile.prefill_tokens,), generator=g).tolist()
        prefill, decode = [], []
        with torch.no_grad():
            for _ in range(2):  # the first round warms up (kernels, allocator)
                cache = DynamicCache()
                started = clock()
                reference._forward(cache, ids=[reference.tokenizer.bos_id, *prompt])
                prefill.append((clock() - started) / (len(prompt) + 1))
                steps = []
                for token in prompt[: profile.decode_tokens]:
                    started = clock()
                    reference._forward(cache, ids=[token])
                    steps.append(clock() - started)
                decode.append(statistics.median(steps))
        return {"prefill_ms_per_token": prefill[-1] * 1e3, "decode_ms_per_token": decode[-1] * 1e3}
    finally:
        model.layers, model.config.num_hidden_layers = all_layers, config_layers


# -- the whole stack ------------------------------------------------------------------------


def check_stack(
    report: Report,
    root: Path,
    reference: Any,
    profile: Profile,
    args: argparse.Namespace,
    redis_url: str,
) -> None:
    from engine.arch import IMAGE_BLOCK_TOKENS
    from engine.image_output import encode_image
    from engine.pipeline_inputs import GenerateJob
    from engine.prompts import build_prompt, text_to_image_template
    from engine.sampling import SamplingOptions

    device = torch.device(report.meta["device"])
    pipeline = _load_pipeline(root, device)
    steps = profile.steps[0]
    options = SamplingOptions(profile.size, profile.size, steps)

    def in_process(seed: int) -> bytes:
        """The served work without serving: prompt, greedy LLM with its image forced as the
        gateway asks, the embedding in float16 as Redis carries it, de-tokenizer, PNG."""
        template = text_to_image_template(MODEL, f"a lighthouse at dusk {seed}")
        ids = list(build_prompt(reference.tokenizer, template).ids)
        budget = profile.image_max_tokens
        generation = reference.generate(
            ids, max_new_tokens=budget, force_image_after=budget - IMAGE_BLOCK_TOKENS
        )
        embedding = generation.images[0].embedding.half().float()[None]
        jobs = pipeline.prepare_generate([GenerateJob(embedding, seed)])
        return encode_image(pipeline.decode(pipeline.sample(jobs, options))[0], "png")

    section = asyncio.run(
        _stack_runs(root, reference, pipeline, profile, args, redis_url, in_process)
    )
    section.update(size=profile.size, steps=steps, image_max_tokens=profile.image_max_tokens)
    report.sections["stack"] = section
    report.goal("stack text-to-image / in-process", section["ratio"], "<=", 1.05)
    report.goal(
        f"images/s, {profile.concurrency} concurrent / sequential",
        section["concurrency"]["speedup"],
        ">=",
        3.0,
    )


async def _stack_runs(
    root: Path,
    reference: Any,
    pipeline: Any,
    profile: Profile,
    args: argparse.Namespace,
    redis_url: str,
    in_process: Callable[[int], bytes],
) -> dict[str, Any]:
    import httpx

    from server.app import create_app
    from server.settings import GatewaySettings
    from workers.connection import create_redis
    from workers.diffusion.settings import DiffusionWorkerSettings
    from workers.diffusion.worker import diffusion_service
    from workers.llm.handler import LLMJobHandler
    from workers.llm.reference_engine import ReferenceLLMEngine
    from workers.settings import QueueSettings, RedisSettings
    from workers.worker import Worker

    redis_settings, queue = RedisSettings(url=redis_url), QueueSettings(block_s=0.2)
    redis = create_redis(redis_settings)
    await redis.flushdb()
    gateway = GatewaySettings(
        api_keys=[API_KEY],
        redis=redis_settings,
        queue=queue,
        admission={
            "stats_ttl_s": 0,
            "stats_max_age_s": 0,
            "directory_ttl_s": 0,
            "directory_max_age_s": 0,
        },
        bounds={"image_max_tokens": profile.image_max_tokens, "max_n": 16},
    )
    diffusion = DiffusionWorkerSettings(
        model=root, max_batch=8, warmup=False, redis=redis_settings, queue=queue
    )
    engine = ReferenceLLMEngine(reference)
    app = create_app(gateway)
    size = f"{profile.size}x{profile.size}"

    async def one(client: httpx.AsyncClient, seed: int) -> tuple[float, bytes]:
        started = time.perf_counter()
        body = {
            "prompt": f"a lighthouse at dusk {seed}",
            "size": size,
            "seed": seed,
            "steps": profile.steps[0],
            "response_format": "b64_json",
        }
        answer = await client.post("/v1/images/generations", json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"gateway answered {answer.status_code}: {answer.text[:300]}")
        elapsed = time.perf_counter() - started
        return elapsed, base64.b64decode(answer.json()["data"][0]["b64_json"])

    clients = [create_redis(redis_settings), create_redis(redis_settings)]
    async with diffusion_service(pipeline, diffusion) as service:
        workers = [
            Worker(
                clients[0],
                queue,
                stage="llm",
                model=MODEL,
                handler=LLMJobHandler(engine),
                capacity=profile.concurrency,
            ),
            Worker(
                clients[1],
                queue,
                stage="diffusion",
                model=diffusion.stream_model,
                handler=service.handler,
                capacity=diffusion.held_jobs,
            ),
        ]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport,
                    base_url="http://gateway",
                    timeout=1200,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                ) as client:
                    await one(client, 0)  # warm: connections, first shapes
                    in_process(0)
                    stack_s, local_s, same = [], [], []
                    for seed in range(1, max(2, args.repeats + 1)):
                        seconds, served = await one(client, seed)
                        stack_s.append(seconds)
                        started = time.perf_counter()
                        local = await asyncio.to_thread(in_process, seed)
                        local_s.append(time.perf_counter() - started)
                        same.append(served == local)
                    n = profile.concurrency
                    started = time.perf_counter()
                    for seed in range(n):
                        await one(client, 100 + seed)
                    sequential = time.perf_counter() - started
                    started = time.perf_counter()
                    await asyncio.gather(*(one(client, 200 + s) for s in range(n)))
                    concurrent = time.perf_counter() - started
        finally:
            for w in workers:
                w.stop()
            await asyncio.gather(*tasks)
            for client in clients:
                await client.aclose()
    await redis.aclose()
    return {
        "stack_s": min(stack_s),
        "in_process_s": min(local_s),
        "ratio": min(stack_s) / min(local_s),
        "same_png_as_in_process": all(same),
        "concurrency": {
            "requests": n,
            "sequential_images_per_s": n / sequential,
            "concurrent_images_per_s": n / concurrent,
            "speedup": sequential / concurrent,
        },
    }


# -- driver ---------------------------------------------------------------------------------


def _meta(device: torch.device, args: argparse.Namespace, profile: Profile) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "device": str(device),
        "dims": args.dims,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "profile": profile.__dict__,
        "llm_layers": args.llm_layers if args.dims == "real" else None,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def _print(report: Report) -> None:
    meta = report.meta
    print(
        f"gpu-check: {meta.get('gpu', meta['device'])}, dims {meta['dims']}, "
        f"torch {meta['torch']}, {meta.get('prepare_s', 0):.1f} s to write the tree"
    )
    print(json.dumps(report.sections, indent=1, default=str))
    print(f"{'goal':<64}{'value':>10}  {'target':<10}met")
    for goal in report.goals:
        print(
            f"{goal['name']:<64}{goal['value']:>10.3f}  {goal['goal']:<10}"
            f"{'yes' if goal['met'] else 'no'}"
        )
    for name, error in report.errors.items():
        print(f"section {name} FAILED:\n{error}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seedx bench gpu-check``."""
    import sys

    from engine.runner import load_reference
    from seedx.gpu_check_placement import check_placement
    from workers.diffusion.bench import redis_url as embedded_or

    args = _parse(sys.argv[1:] if argv is None else argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    profile = _profile(args, device)
    report = Report(_meta(device, args, profile))
    sections = [s for s in args.sections.split(",") if s]
    work = args.work or Path(tempfile.mkdtemp(prefix="seedx-gpu-check-"))
    started = time.perf_counter()
    root = args.model or prepare_tree(args, work, device)
    report.meta["prepare_s"] = time.perf_counter() - started
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    loaded: list[Any] = []

    def reference() -> Any:
        # Loaded when first needed, after the diffusion section (and the placement section's
        # de-tokenizer), so their peak memory is the de-tokenizer's alone.
        if not loaded:
            loaded.append(load_reference(root, MODEL, dtype, device))
        return loaded[0]

    with embedded_or(args.redis_url) as (url, label):
        report.meta["redis"] = label
        checks: dict[str, Callable[[], None]] = {
            "diffusion": lambda: check_diffusion(report, root, profile, args, url),
            "load": lambda: check_load(report, root, profile, args),
            "llm": lambda: check_llm(report, reference(), profile, args),
            "stack": lambda: check_stack(report, root, reference(), profile, args, url),
            "placement": lambda: check_placement(
                report, root, profile, device, MODEL, reference, bool(loaded)
            ),
        }
        for name in sections:
            t0 = time.perf_counter()
            try:
                checks[name]()
            except Exception:
                report.errors[name] = traceback.format_exc()
            report.sections.setdefault(name, {})["section_s"] = time.perf_counter() - t0
            _free(device)
    _print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.as_json(), indent=1, default=str))
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
