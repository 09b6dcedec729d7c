"""Start-up checks of the LLM worker's tensor parallelism and fp8 settings (issue 23).

vLLM finds most of these mistakes too, but late and badly: inside its engine-core process, as an
assertion deep in model construction or a kernel-selection error, reported to the worker as
"Engine core initialization failed", after which a supervisor restarts the worker into the same
failure. These checks run in the worker before vLLM starts, from ``config.json`` and the
platform vLLM detects, and raise :class:`workers.startup.StartupError` (``seedx`` exits 78 and
is not restarted) with a message that names the setting and the numbers or the hardware.

* ``tensor_parallel_size`` must divide the attention heads, the MLP width, the padded
  vocabulary and the KV heads (or be a multiple of the KV heads, which vLLM then replicates):
  SEED-X 17B (40 heads, 40 KV heads, MLP 13824, vocabulary 32330 padded to 32384) allows 1, 2,
  4 and 8. On a GPU host there must be that many visible GPUs. On the CPU backend (tests),
  vLLM's automatic thread binding wants one NUMA node per rank; with fewer,
  ``VLLM_CPU_OMP_THREADS_BIND`` must say which cores each rank gets.
* ``quantization="fp8"`` needs NVIDIA GPUs of compute capability 8.9 or newer (Ada, Hopper),
  whose fp8 tensor cores run vLLM's W8A8 kernels, and a 16-bit model dtype. It is refused on the
  CPU (vLLM 0.32's CPU fp8 kernels need AMX and were never checked against the reference here)
  and on older GPUs (vLLM would fall back to its weight-only Marlin kernel, a different numeric
  path that nobody has compared with the reference either).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.startup import StartupError

FP8_MIN_CAPABILITY = 89
"""Compute capability ``major * 10 + minor`` of the first fp8 tensor cores (Ada: 8.9)."""

VOCAB_PADDING = 64
"""vLLM pads the embedding and lm_head rows to a multiple of this (``pad_vocab_size``), then
splits them evenly over the TP ranks: SEED-X's 32330 become 32384 = 2^7 x 253 rows."""

SIXTEEN_BIT = ("float16", "bfloat16", "half")


@dataclass(frozen=True)
class TrunkShape:
    """The LLaMA sizes tensor parallelism splits, from a serving folder's ``config.json``."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    torch_dtype: str | None = None

    @classmethod
    def read(cls, folder: Path) -> TrunkShape:
        path = folder / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StartupError(f"{path}: cannot read the model's config ({exc})") from exc
        heads = int(config["num_attention_heads"])
        return cls(
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            torch_dtype=config.get("torch_dtype"),
        )


def check_tensor_parallel(size: int, shape: TrunkShape) -> None:
    """Refuses a ``tensor_parallel_size`` the trunk cannot be split by (vLLM's own rules)."""
    setting = f"SEEDX_LLM_TENSOR_PARALLEL_SIZE={size}"
    if size < 1:
        raise StartupError(f"{setting}: must be at least 1")
    heads, kv, mlp = shape.num_attention_heads, shape.num_key_value_heads, shape.intermediate_size
    if heads % size:
        raise StartupError(
            f"{setting} does not divide the model's {heads} attention heads "
            f"(config.json num_attention_heads); use a divisor of {heads}"
        )
    if kv % size and size % kv:
        raise StartupError(
            f"{setting} neither divides nor is a multiple of the model's {kv} KV heads "
            f"(config.json num_key_value_heads)"
        )
    if mlp % size:
        raise StartupError(
            f"{setting} does not divide the model's MLP width {mlp} (config.json intermediate_size)"
        )
    padded = -(-shape.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    if padded % size:
        raise StartupError(
            f"{setting} does not divide the model's vocabulary of {padded} rows "
            f"(config.json vocab_size {shape.vocab_size}, padded by vLLM to a multiple of "
            f"{VOCAB_PADDING})"
        )


def check_devices(size: int, platform: Any) -> None:
    """Enough GPUs for the ranks; on the CPU, a thread binding vLLM can make for them."""
    setting = f"SEEDX_LLM_TENSOR_PARALLEL_SIZE={size}"
    if size == 1:
        return
    if platform.is_cpu():
        if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto":
            return
        if os.environ.get("VLLM_CPU_SIM_MULTI_NUMA", "0") != "0":
            return
        nodes = _numa_nodes()
        if nodes is not None and nodes < size:
            raise StartupError(
                f"{setting} on the CPU backend: vLLM binds each rank's threads to its own NUMA "
                f"node and this host has {nodes}; set VLLM_CPU_OMP_THREADS_BIND to one core "
                f"list per rank (for example '0|1') or 'nobind'"
            )
        return
    count = getattr(platform, "device_count", None)
    visible = count() if callable(count) else None
    if visible is not None and visible < size:
        raise StartupError(
            f"{setting} needs {size} GPUs; {visible} visible to this process "
            f"({platform.device_name} devices, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})"
        )


def check_quantization(
    quantization: str | None, dtype: str, shape: TrunkShape, size: int, platform: Any
) -> None:
    """Refuses fp8 where it is not supported (see the module doc)."""
    if quantization is None:
        return
    setting = f"SEEDX_LLM_QUANTIZATION={quantization}"
    if quantization != "fp8":
        raise StartupError(f"{setting}: unknown quantization (supported: fp8)")
    if platform.is_cpu():
        raise StartupError(
            f"{setting} needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper); "
            "this host runs vLLM's CPU backend: unset it"
        )
    if not platform.is_cuda():
        raise StartupError(
            f"{setting} needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper); "
            f"this host's vLLM platform is {platform.device_name!r}"
        )
    for device in range(size):
        capability = platform.get_device_capability(device)
        value = None if capability is None else capability.major * 10 + capability.minor
        if value is None or value < FP8_MIN_CAPABILITY:
            name = platform.get_device_name(device)
            found = "unknown" if capability is None else f"{capability.major}.{capability.minor}"
            raise StartupError(
                f"{setting} needs GPUs of compute capability 8.9 or newer (Ada, Hopper): "
                f"GPU {device} ({name}) is {found}; unset it on this host"
            )
    resolved = shape.torch_dtype if dtype == "auto" else dtype
    if resolved is not None and str(resolved) not in SIXTEEN_BIT:
        raise StartupError(
            f"{setting} quantizes 16-bit weights: the model's dtype is {resolved} "
            f"(SEEDX_LLM_DTYPE={dtype}); set SEEDX_LLM_DTYPE=bfloat16 or float16"
        )


def check_engine(
    folder: Path,
    tensor_parallel_size: int,
    quantization: str | None,
    dtype: str,
    platform: Any | None = None,
) -> None:
    """Every check above for one engine, on vLLM's detected platform unless one is given."""
    if platform is None:
        from vllm.platforms import current_platform

        platform = current_platform
    shape = TrunkShape.read(folder)
    check_tensor_parallel(tensor_parallel_size, shape)
    check_devices(tensor_parallel_size, platform)
    check_quantization(quantization, dtype, shape, tensor_parallel_size, platform)


def _numa_nodes() -> int | None:
    """NUMA nodes this process may allocate on (Linux sysfs), or None if unknown."""
    try:
        from vllm.utils.cpu_resource_utils import get_visible_memory_node

        return len(get_visible_memory_node())
    except Exception:  # a vLLM without it, or no sysfs: let vLLM decide
        return None
