"""Builders shared by the diffusion worker tests (unit and integration).

A tiny released-layout de-tokenizer tree converted for both stages (~2 s, once per session),
wire jobs with their blobs, an in-memory stand-in for Redis under the real ``BlobStore`` (so
size and checksum verification are the real code), and a ``JobContext`` to drive the handler
without the worker loop.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.arch import tiny_arch
from engine.checkpoint import layout
from engine.checkpoint.convert_detokenizer import convert_detokenizer
from tests.unit.engine.detok_fixtures import write_detok_tree
from workers.blobs import BlobStore
from workers.diffusion.settings import DiffusionWorkerSettings
from workers.handler import JobContext
from workers.protocol import (
    BlobRef,
    Event,
    ImageEditJob,
    ImageGenerateJob,
    ImageReconstructJob,
    Job,
    new_id,
)
from workers.settings import QueueSettings

EMBED_DIM = 128  # tiny_arch's de-tokenizer embedding width
REPLY_TO = "seedx:replies:test"


def build_detok_root(tmp: Path) -> Path:
    """A serving root holding ``detokenizer/{first,second}_stage`` of the tiny arch (fp32)."""
    arch = tiny_arch()
    released = write_detok_tree(tmp / "released", arch)
    root = tmp / "serving"
    for stage in layout.DETOKENIZER_STAGES:
        convert_detokenizer(released, root, stage, arch, torch.float32, progress=False)
    return root


def worker_settings(root: Path, **overrides: Any) -> DiffusionWorkerSettings:
    """Settings for the tiny checkpoint on CPU: no warmup, a short batch window."""
    values: dict[str, Any] = {
        "model": root,
        "device": "cpu",
        "warmup": False,
        "batch_wait_s": 0.05,
        "encode_threads": 1,
        **overrides,
    }
    return DiffusionWorkerSettings(**values)


def embedding(seed: int, tokens: int = 64) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, EMBED_DIM, generator=g).numpy()


def picture(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def envelope(**changes: Any) -> dict[str, Any]:
    return {
        "job_id": new_id(),
        "request_id": new_id(),
        "model": "first_stage",
        "deadline": time.time() + 60,
        "created_at": time.time(),
        "reply_to": REPLY_TO,
        "width": 64,
        "height": 64,
        "steps": 2,
        **changes,
    }


def generate_job(ref: BlobRef, **changes: Any) -> ImageGenerateJob:
    return ImageGenerateJob(**envelope(embedding=ref, **changes))


def edit_job(ref: BlobRef, source: BlobRef, **changes: Any) -> ImageEditJob:
    values = {"model": "second_stage", **changes}
    return ImageEditJob(**envelope(embedding=ref, source=source, **values))


def reconstruct_job(source: BlobRef, **changes: Any) -> ImageReconstructJob:
    return ImageReconstructJob(**envelope(source=source, **changes))


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def max_pixel_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


class MemoryRedis:
    """The few Redis commands ``BlobStore`` uses, in memory (TTLs ignored)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.sets: dict[str, set[str]] = {}

    async def set(self, key: str, value: bytes, px: int | None = None) -> None:
        self.data[key] = value

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def pipeline(self, transaction: bool = False) -> _MemoryPipeline:
        return _MemoryPipeline(self)


class _MemoryPipeline:
    def __init__(self, redis: MemoryRedis) -> None:
        self.redis = redis
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def set(self, key: str, value: bytes, px: int | None = None) -> None:
        self.ops.append(("set", (key, value)))

    def sadd(self, key: str, member: str) -> None:
        self.ops.append(("sadd", (key, member)))

    def pexpire(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def execute(self) -> None:
        for op, args in self.ops:
            if op == "set":
                self.redis.data[args[0]] = args[1]
            else:
                self.redis.sets.setdefault(args[0], set()).add(args[1])


def memory_blobs() -> BlobStore:
    return BlobStore(MemoryRedis(), QueueSettings())  # type: ignore[arg-type]


def context(job: Job, blobs: BlobStore) -> JobContext:
    return JobContext(job, attempt=1, worker_id="test-worker", blobs=blobs)


async def collect(handler: Any, job: Job, ctx: JobContext, timeout: float = 60) -> list[Event]:
    """Every event the handler yields for ``job``."""

    async def run() -> list[Event]:
        return [event async for event in handler(job, ctx)]

    return await asyncio.wait_for(run(), timeout)
