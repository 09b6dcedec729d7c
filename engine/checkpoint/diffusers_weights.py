"""Streaming reads and writes of diffusers model folders (``diffusion_pytorch_model*``).

Reads accept what a diffusers folder may hold: one ``.safetensors``, a sharded set with its
``.safetensors.index.json``, or a pickled ``.bin``; tensors are fetched one at a time
(safetensors handles and memory-mapped pickles), so nothing is loaded before it is needed.
Writes produce what ``from_pretrained`` reads: one ``diffusion_pytorch_model.safetensors``, or
numbered shards plus the index when the weights exceed ``max_shard_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engine.checkpoint.errors import CheckpointError
from engine.checkpoint.safetensors_io import save_shard

STEM = "diffusion_pytorch_model"
SINGLE = f"{STEM}.safetensors"
INDEX = f"{STEM}.safetensors.index.json"
PICKLE = f"{STEM}.bin"


def load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict, memory-mapped when the file format allows it."""
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)  # type: ignore[no-any-return]
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


@dataclass
class TensorSource:
    """Name -> shape of every tensor in a diffusers folder, and ``get`` to read one."""

    folder: Path
    shapes: dict[str, tuple[int, ...]]
    _where: dict[str, Any]

    @classmethod
    def open(cls, folder: Path) -> TensorSource:
        if (folder / INDEX).is_file():
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (folder / SINGLE).is_file():
            files = [SINGLE]
        elif (folder / PICKLE).is_file():
            state = load_pickle(folder / PICKLE)
            return cls(folder, {k: tuple(v.shape) for k, v in state.items()}, state)
        else:
            raise CheckpointError(f"{folder}: no {SINGLE}, {INDEX} or {PICKLE}")
        shapes: dict[str, tuple[int, ...]] = {}
        where: dict[str, Any] = {}
        for name in files:
            if not (folder / name).is_file():
                raise CheckpointError(f"missing file: {folder / name}")
            handle = safe_open(str(folder / name), framework="pt")
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                shapes[key] = tuple(handle.get_slice(key).get_shape())
                where[key] = handle
        return cls(folder, shapes, where)

    def get(self, key: str) -> torch.Tensor:
        holder = self._where[key]
        return holder[key] if isinstance(holder, Mapping) else holder.get_tensor(key)


def _plan(shapes: Mapping[str, tuple[int, ...]], itemsize: int, limit: int) -> list[list[str]]:
    """Sorted keys cut into consecutive shards of at most ``limit`` bytes (one key at least)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key in sorted(shapes):
        nbytes = itemsize * int(torch.Size(shapes[key]).numel())
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def write_weights(
    folder: Path,
    shapes: Mapping[str, tuple[int, ...]],
    get: Callable[[str], torch.Tensor],
    dtype: torch.dtype,
    max_shard_bytes: int,
) -> None:
    """Writes the tensors named in ``shapes`` (read with ``get``, floating ones cast to
    ``dtype``) as diffusers weights in ``folder``, holding one shard in memory at a time."""

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    shards = _plan(shapes, dtype.itemsize, max_shard_bytes)
    if len(shards) == 1:
        save_shard({k: cast(get(k)) for k in shards[0]}, folder / SINGLE)
        return
    weight_map: dict[str, str] = {}
    total = 0
    for index, keys in enumerate(shards):
        name = f"{STEM}-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: cast(get(k)) for k in keys}
        save_shard(tensors, folder / name)
        weight_map.update(dict.fromkeys(keys, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index_data = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index_data, indent=2, sort_keys=True) + "\n")
