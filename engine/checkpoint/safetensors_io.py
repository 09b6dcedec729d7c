"""Reading and writing sharded safetensors folders (HF index layout), one shard at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.checkpoint.errors import CheckpointError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_METADATA = {"format": "pt"}


def shard_name(index: int, total: int) -> str:
    return f"model-{index + 1:05d}-of-{total:05d}.safetensors"


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Writes one shard; fixed metadata and contiguous tensors, so equal input gives equal bytes."""
    save_file(
        {k: v.contiguous() for k, v in sorted(tensors.items())},
        str(path),
        metadata=SAFETENSORS_METADATA,
    )


def write_index(folder: Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> shard file of a safetensors folder (index, or one ``model.safetensors``)."""
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        return dict(json.loads(index_path.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{folder}: neither {SAFETENSORS_INDEX} nor model.safetensors found")
    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single.name)


def iter_tensors(folder: Path, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(name, tensor)`` for names starting with ``prefix``, shard by shard."""
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map(folder).items():
        if name.startswith(prefix):
            by_shard.setdefault(shard, []).append(name)
    for shard, names in sorted(by_shard.items()):
        with safe_open(str(folder / shard), framework="pt") as handle:
            for name in sorted(names):
                yield name, handle.get_tensor(name)
