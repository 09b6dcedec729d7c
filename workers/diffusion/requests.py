"""From a wire diffusion job to a checked :class:`DiffusionRequest` the runner can batch.

Everything a job could get wrong is found here, before it waits for a batch: sizes the engine
cannot sample (multiples of 64, pixel and aspect-ratio limits; the micro-conditioning then follows
the size), step counts, unknown schedulers, seeds, a job kind this de-tokenizer cannot run, and
the input blobs. An embedding blob is verified before use: its recorded dtype and shape must be
what the de-tokenizer takes and it must carry a checksum, which ``BlobStore`` checks together with
the size; its values must be finite. Each failure raises :class:`BadRequest` (or the blob
store's ``BlobMissing``/``BlobCorrupt``) naming the wire parameter.

Seeds: a job without one gets a fresh random seed, reported back in ``ImageReady.seed``; that
includes edits, whose reference default is 42 (``engine.pipeline_inputs.EDIT_DEFAULT_SEED``),
so ``n > 1`` edits differ. The gateway sends 42 to reproduce the reference.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from engine.pipeline_inputs import EditJob, GenerateJob, ReconstructJob
from engine.sampling import MAX_SIDE, SIZE_MULTIPLE, ParameterError, SamplingOptions, resolve_seed
from workers.blobs import BlobStore
from workers.diffusion.errors import BadRequest
from workers.errors import BlobCorrupt, BlobMissing
from workers.protocol import (
    BlobRef,
    ImageEditJob,
    ImageFormat,
    ImageGenerateJob,
    ImageReconstructJob,
)

DiffusionJob = ImageGenerateJob | ImageEditJob | ImageReconstructJob
EngineJob = GenerateJob | EditJob | ReconstructJob

# Wire scheduler names -> engine.schedulers names (the engine's own names, plus aliases).
SCHEDULER_ALIASES = {
    "euler": "euler",
    "ddim": "ddim",
    "dpmsolver++": "dpmsolver++",
    "dpmsolver": "dpmsolver++",
    "dpmsolver_pp": "dpmsolver++",
}
EMBEDDING_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class RequestLimits:
    """What this worker accepts: its de-tokenizer and the configured bounds."""

    stage: str
    embedding_dim: int
    embedding_tokens: int
    can_reconstruct: bool
    max_steps: int
    max_pixels: int
    max_aspect_ratio: float
    max_source_pixels: int


class BatchKey(NamedTuple):
    """What jobs sharing one UNet batch must agree on (guidance may differ per job)."""

    height: int
    width: int
    steps: int
    scheduler: str


@dataclass(frozen=True, eq=False)
class DiffusionRequest:
    """One checked job: the engine job (explicit seed), its sampling options and output."""

    job_id: str
    trace_id: str
    kind: str
    engine_job: EngineJob
    options: SamplingOptions
    seed: int
    preview_steps: tuple[int, ...]
    output_format: ImageFormat
    quality: int | None
    priority: int
    created_at: float
    deadline: float

    @property
    def key(self) -> BatchKey:
        o = self.options
        return BatchKey(o.height, o.width, o.num_inference_steps, o.scheduler)

    @property
    def pixels(self) -> int:
        return self.options.height * self.options.width


def preview_steps(steps: int, count: int) -> tuple[int, ...]:
    """Step indices after which to send ``count`` previews, evenly spread, never the last step.

    With too few steps fewer previews are sent (OpenAI's ``partial_images`` allows that).
    """
    done = {steps * i // (count + 1) for i in range(1, count + 1)}
    return tuple(sorted(n - 1 for n in done if 1 <= n < steps))


def _check_size(job: DiffusionJob, limits: RequestLimits) -> None:
    for name in ("width", "height"):
        value = getattr(job, name)
        if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= MAX_SIDE:
            raise BadRequest(
                f"`{name}` must be a multiple of {SIZE_MULTIPLE} in [{SIZE_MULTIPLE}, {MAX_SIDE}],"
                f" got {value}",
                name,
            )
    if job.width * job.height > limits.max_pixels:
        raise BadRequest(
            f"`size` {job.width}x{job.height} exceeds {limits.max_pixels} pixels", "size"
        )
    ratio = max(job.width, job.height) / min(job.width, job.height)
    if ratio > limits.max_aspect_ratio:
        raise BadRequest(
            f"`size` {job.width}x{job.height} has aspect ratio {ratio:.2f}, "
            f"more than {limits.max_aspect_ratio:g}",
            "size",
        )


def _check_kind(job: DiffusionJob, limits: RequestLimits) -> None:
    needs = {"image.generate": "first_stage", "image.edit": "second_stage"}.get(job.kind)
    if needs is not None and needs != limits.stage:
        raise BadRequest(
            f"{job.kind} needs the {needs} de-tokenizer; this worker serves {limits.stage}",
            "kind",
        )
    if job.kind == "image.reconstruct" and not limits.can_reconstruct:
        raise BadRequest("image.reconstruct needs the ViT, which this worker did not load", "kind")


def check_parameters(job: DiffusionJob, limits: RequestLimits) -> tuple[SamplingOptions, int]:
    """The sampling options and resolved seed of ``job``; raises ``BadRequest``."""
    _check_kind(job, limits)
    _check_size(job, limits)
    if job.steps > limits.max_steps:
        raise BadRequest(f"`steps` must be at most {limits.max_steps}, got {job.steps}", "steps")
    scheduler = SCHEDULER_ALIASES.get(job.scheduler)
    if scheduler is None:
        raise BadRequest(
            f"`scheduler` must be one of {sorted(SCHEDULER_ALIASES)}, got {job.scheduler!r}",
            "scheduler",
        )
    try:
        seed = resolve_seed(job.seed)
        options = SamplingOptions(job.height, job.width, job.steps, scheduler)
        options.validate()
    except ParameterError as exc:
        raise BadRequest(str(exc), exc.param) from exc
    return options, seed


def _check_embedding_ref(ref: BlobRef, limits: RequestLimits) -> None:
    tokens, dim = limits.embedding_tokens, limits.embedding_dim
    if ref.dtype not in EMBEDDING_DTYPES:
        raise BadRequest(f"`embedding` must be float16 or float32, got {ref.dtype}", "embedding")
    if ref.shape not in ((tokens, dim), (1, tokens, dim)):
        raise BadRequest(
            f"`embedding` must have shape [{tokens}, {dim}], got {list(ref.shape or ())}",
            "embedding",
        )
    if ref.checksum is None or ref.nbytes is None:
        raise BadRequest("`embedding` blob must record its size and checksum", "embedding")


async def read_embedding(blobs: BlobStore, ref: BlobRef, limits: RequestLimits) -> torch.Tensor:
    """The verified visual embedding ``[1, T, D]`` (float32) of a tensor blob."""
    _check_embedding_ref(ref, limits)
    try:
        array = await blobs.get_tensor(ref)
    except (BlobMissing, BlobCorrupt) as exc:
        raise type(exc)(exc.message, param="embedding") from exc
    values = np.array(array, dtype=np.float32)
    # numpy, not torch: this runs on the event loop, and torch work off the device thread slows
    # every later step of the process (workers.diffusion.device_thread)
    if not np.isfinite(values).all():
        raise BadRequest("`embedding` holds NaN or infinite values", "embedding")
    return torch.from_numpy(values).reshape(1, limits.embedding_tokens, limits.embedding_dim)


async def read_image(blobs: BlobStore, ref: BlobRef, param: str, max_pixels: int) -> Image.Image:
    """A decoded RGB image blob; refuses undecodable data and decompression bombs."""
    try:
        data = await blobs.get(ref)
    except (BlobMissing, BlobCorrupt) as exc:
        raise type(exc)(exc.message, param=param) from exc
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise BadRequest(
                    f"`{param}` is {image.width}x{image.height}, more than {max_pixels} pixels",
                    param,
                )
            return image.convert("RGB")
    except BadRequest:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"`{param}` is not a decodable image: {exc}", param) from exc


async def build_request(
    job: DiffusionJob, blobs: BlobStore, limits: RequestLimits
) -> DiffusionRequest:
    """Checks ``job`` and reads its blobs; raises ``BadRequest``/``BlobMissing``/``BlobCorrupt``."""
    options, seed = check_parameters(job, limits)
    engine_job: EngineJob
    if isinstance(job, ImageGenerateJob):
        embeds = await read_embedding(blobs, job.embedding, limits)
        engine_job = GenerateJob(embeds, seed, job.guidance_scale)
    elif isinstance(job, ImageEditJob):
        embeds = await read_embedding(blobs, job.embedding, limits)
        source = await read_image(blobs, job.source, "source", limits.max_source_pixels)
        engine_job = EditJob(embeds, source, seed, job.guidance_scale, job.image_guidance_scale)
    else:
        source = await read_image(blobs, job.source, "source", limits.max_source_pixels)
        # The wire job has one image: on the second stage it is also its own condition.
        condition = source if limits.stage == "second_stage" else None
        engine_job = ReconstructJob(source, condition, seed, job.guidance_scale)
    return DiffusionRequest(
        job_id=job.job_id,
        trace_id=job.trace_id,
        kind=job.kind,
        engine_job=engine_job,
        options=options,
        seed=seed,
        preview_steps=preview_steps(options.num_inference_steps, job.partial_images),
        output_format=job.output_format,
        quality=job.output_compression,
        priority=job.priority,
        created_at=job.created_at,
        deadline=job.deadline,
    )
