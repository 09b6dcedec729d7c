"""The GPUs a plan may use: parsed from ``--gpus 2x24GB,1x80GB:h100`` or detected on this host.

How a size is read. Vendors print memory sizes in two ways: an "80GB" A100 or H100 has 80 GiB
(81,920 / 81,559 MiB), a "24GB" L4 has 24.15 * 10**9 bytes (23,034 MiB), a "141GB" H200 has
143,771 MiB. ``GB`` is therefore read as 10**9 bytes, the smaller reading: it is never more than
the card really has, so a plan made from the label cannot overcommit the card (it leaves up to 7 %
unused on the GiB-sized cards). For exact figures give ``GiB`` or ``MiB`` (nvidia-smi's unit:
``1x81559MiB``), or let :func:`detect` read the totals.

What a plan never hands out, per GPU (:attr:`Gpu.reserved_bytes`):

* ``GPU_RESERVE_FIXED_BYTES`` = 1 GiB: memory the driver keeps for itself outside the reported
  total's usable part (NVML's ``reserved``, ~0.5 GiB on an H100 with a recent driver) and small
  strangers on the card (nvidia-persistenced, DCGM, a display), with margin. The CUDA context of
  each of *our* processes is not in here: it is counted per process and GPU, in the planner.
* ``GPU_RESERVE_FRACTION`` = 3 % of the total: the fragmentation of PyTorch's caching allocator
  in a long-running server (blocks are rounded to 2 MiB and split; 2-5 % is what
  ``memory_reserved - memory_allocated`` shows after hours of mixed batch sizes). vLLM's default
  ``gpu_memory_utilization`` of 0.9 leaves 10 % for this and the context together; we count the
  contexts separately, so a smaller share is left here.

fp8. vLLM's fp8 path (W8A8 with fp8 tensor cores) needs compute capability 8.9 or newer (Ada:
L4, L40S, RTX 4090, RTX 6000 Ada; Hopper: H100, H200; Blackwell). A size says nothing about it
(an 80 GB A100 has none, a 24 GB L4 has it), so a spec states it: ``:fp8`` or a model tag that
implies it (``:h100``), and a GPU without either is planned without fp8. :func:`detect` reads the
compute capability.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

GB = 10**9
GIB = 2**30
MIB = 2**20

GPU_RESERVE_FIXED_BYTES = GIB
GPU_RESERVE_FRACTION = 0.03
FP8_MIN_CAPABILITY = (8, 9)
MAX_GPUS = 64

UNITS = {"gb": GB, "gib": GIB, "mb": 10**6, "mib": MIB}
UNIT_LABELS = {"gb": "GB", "gib": "GiB", "mb": "MB", "mib": "MiB"}

# Model tags a spec may carry, and whether that model has fp8 tensor cores (capability >= 8.9).
GPU_MODELS: dict[str, bool] = {
    "h100": True,
    "h200": True,
    "h20": True,
    "gh200": True,
    "b200": True,
    "gb200": True,
    "l4": True,
    "l40": True,
    "l40s": True,
    "rtx4090": True,
    "rtx6000ada": True,
    "a100": False,
    "a800": False,
    "a40": False,
    "a30": False,
    "a10": False,
    "a10g": False,
    "a6000": False,
    "rtx3090": False,
    "v100": False,
    "t4": False,
}
FP8_TAG = "fp8"

_ITEM = re.compile(r"^(?:(\d+)\s*[x×]\s*)?(\d+(?:\.\d+)?)\s*([a-z]+)$")


@dataclass(frozen=True)
class Gpu:
    """One GPU: its CUDA index (PCI bus order), a name for tables, total memory, fp8 support."""

    index: int
    name: str
    total_bytes: int
    fp8: bool = False

    @property
    def reserved_bytes(self) -> int:
        """What no process of a plan may use on this GPU (see the module docstring)."""
        return GPU_RESERVE_FIXED_BYTES + int(self.total_bytes * GPU_RESERVE_FRACTION)

    @property
    def usable_bytes(self) -> int:
        return self.total_bytes - self.reserved_bytes


def _parse_tags(tags: list[str], item: str) -> tuple[str | None, bool]:
    """``(model name or None, fp8)`` from the ``:``-separated tags of one item."""
    model: str | None = None
    fp8 = False
    for tag in (t.strip().lower() for t in tags):
        if tag == FP8_TAG:
            fp8 = True
        elif tag in GPU_MODELS:
            if model is not None:
                raise ValueError(f"--gpus {item!r}: two GPU models ({model}, {tag})")
            model = tag
        else:
            raise ValueError(
                f"--gpus {item!r}: unknown tag {tag!r}; use :fp8 or a GPU model "
                f"({', '.join(sorted(GPU_MODELS))})"
            )
    if model is not None:
        if fp8 and not GPU_MODELS[model]:
            raise ValueError(f"--gpus {item!r}: {model} has no fp8 (compute capability < 8.9)")
        fp8 = GPU_MODELS[model]
    return model, fp8


def parse_gpus(spec: str) -> list[Gpu]:
    """``"2x24GB,1x80GB:h100,1x141GB:fp8"`` -> GPUs 0..3, indices in the order written.

    Each item is ``[COUNT x] SIZE UNIT [:TAG ...]``: UNIT one of GB (10**9 bytes), GiB, MB,
    MiB; TAG ``fp8`` or a GPU model (``h100``, ``l4``, ``a100``, ...), which sets fp8 support.
    """
    gpus: list[Gpu] = []
    items = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(f"--gpus {spec!r}: give items like 2x24GB,1x80GB:h100")
    for item in items:
        head, *tags = item.split(":")
        match = _ITEM.match(head.strip().lower())
        if match is None or match.group(3) not in UNITS:
            raise ValueError(
                f"--gpus {item!r}: expected [COUNT x] SIZE UNIT[:TAG], e.g. 2x24GB or "
                "1x81559MiB:h100 (units GB = 10^9 bytes, GiB, MB, MiB)"
            )
        count = int(match.group(1) or 1)
        total = int(float(match.group(2)) * UNITS[match.group(3)])
        if count < 1 or total <= GPU_RESERVE_FIXED_BYTES:
            raise ValueError(f"--gpus {item!r}: need a count >= 1 and a size above 1 GiB")
        model, fp8 = _parse_tags(tags, item)
        label = f"{match.group(2)}{UNIT_LABELS[match.group(3)]}"
        name = f"{model.upper()} {label}" if model else label
        start = len(gpus)
        gpus.extend(Gpu(start + i, name, total, fp8) for i in range(count))
    if len(gpus) > MAX_GPUS:
        raise ValueError(f"--gpus {spec!r}: {len(gpus)} GPUs, at most {MAX_GPUS}")
    return gpus


def format_spec(gpus: Sequence[Gpu]) -> str:
    """A ``--gpus`` spec for these GPUs' sizes and fp8 support, runs of equal GPUs counted
    (sizes in MiB where they are not a whole number of GB)."""
    parts: list[tuple[int, str]] = []
    for gpu in gpus:
        whole = gpu.total_bytes % GB == 0
        size = f"{gpu.total_bytes // GB}GB" if whole else f"{gpu.total_bytes // MIB}MiB"
        item = size + (":fp8" if gpu.fp8 else "")
        if parts and parts[-1][1] == item:
            parts[-1] = (parts[-1][0] + 1, item)
        else:
            parts.append((1, item))
    return ",".join(f"{count}x{item}" for count, item in parts)


# -- detection ------------------------------------------------------------------------------


def _visible_indices() -> list[int] | None:
    """The integer entries of ``CUDA_VISIBLE_DEVICES`` (None: unset, or UUIDs we do not map)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if not all(e.isdigit() for e in entries):
        return None
    return [int(e) for e in entries]


def _detect_nvml() -> list[Gpu] | None:
    """GPUs through NVML (pynvml), in PCI bus order; None when NVML is not there."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver on this host
        return None
    try:
        visible = _visible_indices()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            if visible is not None and index not in visible:
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            gpus.append(Gpu(index, name, total, capability >= FP8_MIN_CAPABILITY))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _detect_torch() -> list[Gpu] | None:
    """GPUs through ``torch.cuda`` (imported here, never at module import: it takes seconds)."""
    # NVML and nvidia-smi number GPUs in PCI bus order; CUDA's default is fastest first. The
    # plan's CUDA_VISIBLE_DEVICES come with CUDA_DEVICE_ORDER=PCI_BUS_ID, so read them so too.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    try:
        import torch
    except ImportError:
        return None

    if not torch.cuda.is_available():
        return []
    visible = _visible_indices()
    gpus = []
    for ordinal in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(ordinal)
        index = visible[ordinal] if visible is not None and ordinal < len(visible) else ordinal
        capability = (props.major, props.minor)
        gpus.append(Gpu(index, props.name, props.total_memory, capability >= FP8_MIN_CAPABILITY))
    return gpus


def detect() -> list[Gpu]:
    """This host's GPUs (NVML if ``pynvml`` imports, else ``torch.cuda``); [] when none."""
    gpus = _detect_nvml()
    if gpus is None:
        gpus = _detect_torch()
    return gpus or []
