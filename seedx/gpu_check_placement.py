"""The ``placement`` section of ``seedx bench gpu-check``: the planner's budgets against memory.

``seedx.placement`` gives every process a memory budget per GPU from estimates (``sizes.py``:
weights counted from the shard headers, the CUDA context a constant, the de-tokenizer's
activations from per-latent-pixel constants). This section plans for the device it runs on and
measures what the plan's processes really take, at the plan's settings:

* **the plan**: for the detected GPUs (``inventory.detect``), with the sizes of the tree the check
  loads (``read_serving_tree``; served in the check's dtype), the check's image size and
  ``max_batch``; beside it, for reference, the plan of the released SEED-X-17B on the same GPUs
  (same workload: its diffusion activation and context budgets are the same figures; the check's
  ``--dims real`` tree differs from the release only in LLM and ViT layers).
* **diffusion**: the de-tokenizer loaded as the diffusion worker loads it (``load_pipeline``, the
  plan's dtype, ``max_batch`` and ``decode_batch``), one batch of ``max_batch`` images run twice
  (a warm-up, as the worker's, then the measured one): 2 denoising steps, then the VAE decode in
  ``decode_batch`` chunks as the worker's runner does. On CUDA: weights = ``memory_allocated``
  after the load minus before; activations = the peak of ``memory_allocated`` over the measured
  batch above what was allocated before it, the UNet's and the decode's peaks apart (the batch's
  is the larger; the plan adds the two, for the allocator's cache keeps the denoising blocks
  while the decode allocates its own); the process's peak = its memory outside torch's allocator
  (device used memory - ``memory_reserved`` after the batch: the CUDA context, module code,
  library handles, which torch's counters miss; the check is alone on a lent GPU, and whatever
  the driver reports as used beyond that counts here too, so it is an upper bound) + the peak of
  ``memory_reserved`` over the load and the warm-up batch (torch's cache included: what the GPU
  cannot hand to another process). That peak ÷ the plan's budget (context + weights +
  activations) is the figure with the 10 % goal; the parts have their own ratios.
* **llm**: the weights only (vLLM's activations, CUDA graphs and KV cache need vLLM, which cannot
  be carried to the GPU machine): what the reference LLM (LLaMA + ViT + resamplers: the LLM
  folder) takes, ``memory_allocated`` over its load on CUDA, ÷ the plan's ``weights_bytes``.

On the CPU (CI, toy tree) the same code runs with a fake inventory (``1x80GB:h100``) and the
plan in float32 (what the CPU loads). Weights are the bytes of the loaded tensors (parameters,
buffers, the negative features: an exact count, so weights ÷ plan checks ``sizes.py``'s header
count against the loaders); activations are the growth of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident set before the batch:
toy-size tensors plus malloc and thread-pool noise, compared with constants made for SDXL at real
size, so that ratio proves the plumbing, not the constants. There is no CUDA context on the CPU:
the comparison there is weights + activations against the plan's weights + activations.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CPU_GPUS = "1x80GB:h100"
"""The inventory the CPU run plans for (parse_gpus): one lent-machine-like GPU."""
GOAL = 0.10
"""Measured ÷ planned within 1 ± this: a budget that is too small fails at run time, one that is
too large wastes a GPU's room for KV cache."""
STEPS = 2


# -- measuring memory -----------------------------------------------------------------------


def _proc_status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in bytes ({} where /proc is not there)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _trim_heap() -> None:
    """Hands freed heap back to the OS (glibc), so the resident set before a run is what is live."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Meter:
    """Peak memory of a stretch of work: torch's CUDA allocator on CUDA, the process's resident
    set on the CPU (``VmHWM`` after resetting it; None where the kernel does not allow that)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._base = 0

    def settle(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        else:
            _trim_heap()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else 0

    def reserved(self) -> int:
        return torch.cuda.memory_reserved(self.device) if self.cuda else 0

    def start(self) -> bool:
        """Takes the baseline (allocated, or resident) and resets the peak; False where the peak
        cannot be reset (a CPU without /proc/self/clear_refs)."""
        self.settle()
        self._base = self.allocated() if self.cuda else _proc_status().get("VmRSS", 0)
        return self.reset_peak()

    def reset_peak(self) -> bool:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)
        except OSError:
            return False
        return True

    def growth(self) -> int:
        """The peak since the last reset above the baseline of ``start``."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device)) - self._base
        return _proc_status().get("VmHWM", 0) - self._base

    def outside_torch(self) -> int | None:
        """Device memory this process holds outside torch's allocator: context, module code,
        library handles (CUDA; assumes nothing else runs on the GPU). None on the CPU."""
        if not self.cuda:
            return None
        free, total = torch.cuda.mem_get_info(self.device)
        return int(total - free) - self.reserved()


def tensor_bytes(device: torch.device, *objects: Any) -> int:
    """Bytes of the distinct storages on ``device`` of these modules' parameters and buffers
    (and of plain tensors)."""
    seen: set[int] = set()
    total = 0
    for obj in objects:
        if obj is None:
            continue
        if isinstance(obj, torch.nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.Tensor):
            tensors = [obj]
        else:
            raise TypeError(f"tensor_bytes: {type(obj).__name__}")
        for tensor in tensors:
            if tensor.device.type != device.type:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _ratio(measured: int | None, planned: int) -> float | None:
    return None if measured is None or not planned else measured / planned


# -- the plans ------------------------------------------------------------------------------


def _inventory(device: torch.device) -> tuple[list[Any], str]:
    from seedx.placement.inventory import detect, parse_gpus

    if device.type != "cuda":
        return parse_gpus(CPU_GPUS), f"--gpus {CPU_GPUS} (CPU run: a stand-in inventory)"
    gpus = detect()
    if not gpus:
        raise RuntimeError("CUDA is there but inventory.detect() found no GPU")
    return gpus, "inventory.detect()"


def _summary(plan: Any) -> dict[str, Any]:
    return {
        p.name: {
            "gpus": list(p.gpus),
            "dtype": p.dtype,
            "tensor_parallel_size": p.tensor_parallel_size,
            "weights_bytes": p.weights_bytes,
            "overhead_bytes": p.overhead_bytes,
            "activation_bytes": p.activation_bytes,
            "kv_cache_bytes": p.kv_cache_bytes,
            "budget_bytes": p.budget_bytes,
        }
        for p in plan.processes
    }


# -- the section ----------------------------------------------------------------------------


def check_placement(
    report: Any,
    root: Path,
    profile: Any,
    device: torch.device,
    model: str,
    reference: Callable[[], Any],
    reference_loaded: bool,
) -> None:
    """Fills ``report.sections["placement"]`` and its goals; ``reference`` loads (once) and
    returns the reference LLM, ``reference_loaded``: whether an earlier section loaded it."""
    from engine.checkpoint.layout import DETOKENIZER_FOR_MODEL
    from seedx.placement.planner import Workload, plan, try_plan
    from seedx.placement.sizes import read_serving_tree, released_sizes

    gpus, source = _inventory(device)
    dtype = "float16" if device.type == "cuda" else "float32"
    stage = DETOKENIZER_FOR_MODEL[model]
    workload = Workload(max_batch=profile.max_batch, width=profile.size, height=profile.size)
    sizes = dataclasses.replace(read_serving_tree(root), dtype=dtype)
    tree_plan = plan(gpus, sizes, [model], [stage], workload)
    released = try_plan(gpus, released_sizes(), [model], [stage], workload)
    section: dict[str, Any] = {
        "inventory": source,
        "gpus": [dataclasses.asdict(g) for g in gpus],
        "workload": dataclasses.asdict(workload),
        "dtype": dtype,
        "plan": _summary(tree_plan),
        "released_plan": _summary(released) if released else "refused: does not fit these GPUs",
        "goal": f"measured / planned within 1 ± {GOAL}",
    }
    report.sections["placement"] = section
    diffusion = tree_plan.process(f"diffusion:{stage}")
    section[diffusion.name] = measure_diffusion(root, device, diffusion, workload)
    llm = tree_plan.process(f"llm:{model}")
    section[llm.name] = measure_llm(device, llm, reference, reference_loaded)
    for name in (diffusion.name, llm.name):
        ratio = section[name]["ratio"]["compared"]
        if ratio is not None:
            what = "memory" if name == diffusion.name else "weights"
            report.goal(f"placement {name} {what}, measured / planned", ratio, "within", GOAL)


def measure_diffusion(
    root: Path, device: torch.device, process: Any, workload: Any
) -> dict[str, Any]:
    """The de-tokenizer at the plan's settings: weights, one batch's activations, the peak."""
    from engine.pipeline_inputs import GenerateJob
    from engine.sampling import SamplingOptions
    from seedx.placement.sizes import diffusion_activation_bytes
    from workers.diffusion.acceleration import set_vae_tiling
    from workers.diffusion.settings import DiffusionWorkerSettings
    from workers.diffusion.worker import load_pipeline

    settings = DiffusionWorkerSettings(
        model=root,
        detokenizer=process.model,
        device=str(device),
        dtype=process.dtype,
        load_vit=workload.load_vit,
        max_batch=int(process.env["SEEDX_DIFFUSION_MAX_BATCH"]),
        decode_batch=int(process.env["SEEDX_DIFFUSION_DECODE_BATCH"]),
        warmup=False,
    )
    meter = Meter(device)
    meter.settle()
    if meter.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base_allocated, base_reserved = meter.allocated(), meter.reserved()
    pipeline = load_pipeline(settings)
    negative = pipeline.negative_features()  # loaded from negative.safetensors, not computed
    counted = tensor_bytes(
        device,
        *(pipeline.unet, pipeline.vae, pipeline.resampler, pipeline.vit),
        *(negative.pooled, negative.tokens),
    )
    weights = meter.allocated() - base_allocated if meter.cuda else counted

    arch = pipeline.resampler.arch
    g = torch.Generator().manual_seed(0)
    batch = settings.max_batch
    jobs_in = [
        GenerateJob(torch.randn(1, arch.num_queries, arch.embedding_dim, generator=g), seed=i)
        for i in range(batch)
    ]
    options = SamplingOptions(workload.height, workload.width, STEPS)
    set_vae_tiling(pipeline.vae, workload.height, workload.width, settings.vae_tiling_min_side)

    def decode(pipeline: Any, latents: torch.Tensor) -> None:
        for start in range(0, len(latents), settings.decode_batch):
            pipeline.decode(latents[start : start + settings.decode_batch])

    decode(pipeline, pipeline.sample(pipeline.prepare_generate(jobs_in), options))  # warm-up
    reserved_peak = (
        int(torch.cuda.max_memory_reserved(device)) - base_reserved if meter.cuda else None
    )
    # The measured batch, its phases apart; both peaks are above the state before the batch.
    peaks: dict[str, int | None] = {"unet": None, "decode": None, "batch": None}
    if meter.start():
        latents = pipeline.sample(pipeline.prepare_generate(jobs_in), options)
        unet = meter.growth()
        meter.reset_peak()
        decode(pipeline, latents)
        decode_peak = meter.growth()
        peaks = {"unet": unet, "decode": decode_peak, "batch": max(unet, decode_peak)}
        del latents
    outside = meter.outside_torch()
    del pipeline
    meter.settle()

    rows = 3 if process.model == "second_stage" else 2
    unet_planned = diffusion_activation_bytes(
        rows, workload.width, workload.height, batch, 0, settings.vae_tiling_min_side
    )
    planned = {
        "context": process.overhead_bytes,
        "weights": process.weights_bytes,
        "activations": process.activation_bytes,
        "unet": unet_planned,
        "decode": process.activation_bytes - unet_planned,
        "budget": process.budget_bytes,
    }
    activations = peaks["batch"]
    measured: dict[str, Any] = {
        "context": outside,
        "weights": weights,
        "weights_tensor_bytes": counted,
        "activations": activations,
        "unet": peaks["unet"],
        "decode": peaks["decode"],
    }
    if meter.cuda:
        # What the process holds at its peak: outside torch + torch's reserved peak (load and a
        # batch: the cache keeps the denoising blocks while the decode allocates its own).
        measured["reserved_peak"] = reserved_peak
        measured["peak"] = (outside or 0) + (reserved_peak or 0)
        compared = _ratio(measured["peak"], process.budget_bytes)
        accounting = (
            "CUDA: context = device used memory - torch memory_reserved after the batch (the "
            "CUDA context, module code, library handles; torch's counters miss it); peak = that "
            "+ the peak of memory_reserved over the load and a batch; compared with the budget"
        )
    else:
        measured["peak"] = None if activations is None else weights + activations
        compared = _ratio(measured["peak"], process.weights_bytes + process.activation_bytes)
        accounting = (
            "CPU: no CUDA context; weights = loaded tensor bytes, activations = growth of the "
            "peak resident set (VmHWM) over one batch; compared with planned weights + "
            "activations (the budget less its context)"
        )
    return {
        "gpus": list(process.gpus),
        "size": f"{workload.width}x{workload.height}",
        "max_batch": batch,
        "decode_batch": settings.decode_batch,
        "steps": STEPS,
        "planned": planned,
        "measured": measured,
        "ratio": {
            "weights": _ratio(weights, process.weights_bytes),
            "activations": _ratio(activations, process.activation_bytes),
            "unet": _ratio(peaks["unet"], unet_planned),
            "decode": _ratio(peaks["decode"], planned["decode"]),
            "context": _ratio(outside, process.overhead_bytes),
            "compared": compared,
        },
        "within_goal": None if compared is None else abs(compared - 1) <= GOAL,
        "accounting": accounting,
    }


def measure_llm(
    device: torch.device, process: Any, reference: Callable[[], Any], reference_loaded: bool
) -> dict[str, Any]:
    """The plan's LLM weights against the reference LLM's (LLaMA + ViT + resamplers)."""
    meter = Meter(device)
    meter.settle()
    before = meter.allocated()
    model = reference()
    counted = tensor_bytes(device, model.llm, model.encoder)
    if meter.cuda and not reference_loaded:
        measured, how = meter.allocated() - before, "torch.cuda.memory_allocated over its load"
    else:
        measured, how = counted, "bytes of its loaded tensors (parameters and buffers)"
    ratio = _ratio(measured, process.weights_bytes)
    return {
        "gpus": list(process.gpus),
        "tensor_parallel_size": process.tensor_parallel_size,
        "planned": {
            "weights": process.weights_bytes,
            "overhead": process.overhead_bytes,
            "kv_cache": process.kv_cache_bytes,
            "budget": process.budget_bytes,
        },
        "measured": {"weights": measured, "weights_tensor_bytes": counted, "how": how},
        "ratio": {"weights": ratio, "compared": ratio},
        "within_goal": None if ratio is None else abs(ratio - 1) <= GOAL,
        "not_measured": "overhead (vLLM's activations, CUDA graphs) and KV cache: they need "
        "vLLM, which the GPU check cannot carry",
    }
