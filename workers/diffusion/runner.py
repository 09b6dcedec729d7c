"""Runs one batch on the de-tokenizer, blocking (the dispatcher calls it in its device thread).

For a batch of compatible requests: each job is prepared alone (resampler, condition latents,
ViT features), so one bad job fails by itself; the survivors sample in one UNet batch through
``DetokenizerPipeline.sample_batch``, which is the engine's own loop, so a job's image equals
the reference pipeline's for the same seed. After every step the runner drops jobs whose item
reports ``stopped`` (cancelled, expired, reclaimed: they stop costing UNet work at the next
step) and sends previews at the requested steps. Final latents are VAE-decoded in chunks.

Out of memory: a batch that does not fit is split in half and each half retried (recursively),
so one large batch degrades to smaller ones instead of failing every job; a single job that
still does not fit fails with ``out_of_memory``. A decode that does not fit falls back to one
image at a time, then to tiled decoding. Previews already sent are not repeated by a retry.

Every item that is not stopped gets exactly one terminal output: ``Finished`` or ``Failure``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from engine.image_output import latents_to_preview
from engine.pipeline_inputs import EditJob, GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import BatchStepCallback, ParameterError, SamplingJob, SamplingOptions
from workers.diffusion import metrics
from workers.diffusion.acceleration import free_device_memory, set_vae_tiling
from workers.diffusion.errors import BadRequest, DiffusionError, InternalError, OutOfMemory
from workers.diffusion.requests import DiffusionRequest
from workers.logcontext import bind_job

logger = logging.getLogger(__name__)

# Engine parameter names -> the wire job's field names, for BadRequest.param.
_WIRE_PARAMS = {
    "num_inference_steps": "steps",
    "image_embeds": "embedding",
    "condition_latent": "source",
    "condition": "source",
}


@dataclass(frozen=True)
class Preview:
    """Partial image ``index`` (0-based) of a job: a 1/8-size latent projection."""

    index: int
    image: Image.Image


@dataclass(frozen=True)
class Finished:
    """The job's final image."""

    image: Image.Image


@dataclass(frozen=True)
class Failure:
    """The job failed; ``error`` carries its wire code and parameter."""

    error: DiffusionError


Output = Preview | Finished | Failure


class BatchItem(Protocol):
    """A request as the runner sees it; ``emit`` must be safe to call from the device thread."""

    @property
    def request(self) -> DiffusionRequest: ...

    @property
    def stopped(self) -> bool:
        """True once nobody waits for this job's result."""

    def emit(self, output: Output) -> None:
        """Hand an output to whoever waits for the job (thread-safe)."""


class BatchRunner:
    """Prepares, samples and decodes batches on one ``DetokenizerPipeline``."""

    def __init__(
        self, pipeline: DetokenizerPipeline, *, decode_batch: int = 4, vae_tiling_min_side: int = 0
    ) -> None:
        self.pipeline = pipeline
        self.decode_batch = decode_batch
        self.vae_tiling_min_side = vae_tiling_min_side

    def run(self, items: Sequence[BatchItem]) -> None:
        """Runs one batch of requests sharing a ``BatchKey``; never raises."""
        started = time.perf_counter()
        live = [item for item in items if not item.stopped]
        if not live:
            return
        options = live[0].request.options
        try:
            prepared = self._prepare(live, options)
            if prepared:
                self._sample(prepared, options, sent={})
        except Exception:
            logger.exception("batch failed")
            for item in live:
                item.emit(Failure(InternalError("internal error in the diffusion worker")))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    def warmup(self) -> None:
        """One 1-step 64x64 pass with the cached negative as the embedding (loads kernels)."""
        negative = self.pipeline.negative_conditioning(pooled=True)
        job = SamplingJob(negative, negative, seed=0, guidance_scale=7.5)
        if self.pipeline.stage == "second_stage":
            zeros = torch.zeros(1, 4, 8, 8, device=self.pipeline.device, dtype=self.pipeline.dtype)
            job = SamplingJob(negative, negative, 0, 7.5, 1.5, zeros)
        options = SamplingOptions(64, 64, 1)
        self.pipeline.decode(self.pipeline.sample_batch([job], options).latents)

    # --- preparation ---------------------------------------------------------------------------
    def _prepare_one(self, request: DiffusionRequest, options: SamplingOptions) -> SamplingJob:
        job = request.engine_job
        if isinstance(job, GenerateJob):
            return self.pipeline.prepare_generate([job])[0]
        if isinstance(job, EditJob):
            return self.pipeline.prepare_edit([job], options)[0]
        return self.pipeline.prepare_reconstruct([job], options)[0]

    def _prepare(
        self, items: Sequence[BatchItem], options: SamplingOptions
    ) -> list[tuple[BatchItem, SamplingJob]]:
        prepared = []
        for item in items:
            request = item.request
            try:
                with bind_job(request.job_id, request.trace_id):  # this thread has no job context
                    prepared.append((item, self._prepare_one(request, options)))
            except ParameterError as exc:
                param = _WIRE_PARAMS.get(exc.param, exc.param)
                item.emit(Failure(BadRequest(str(exc), param)))
            except torch.OutOfMemoryError:
                free_device_memory(self.pipeline.device)
                item.emit(Failure(OutOfMemory("out of memory preparing the job", "size")))
            except Exception:
                with bind_job(request.job_id, request.trace_id):
                    logger.exception("preparing the job failed")
                item.emit(Failure(InternalError("internal error preparing the job")))
        return prepared

    # --- sampling ------------------------------------------------------------------------------
    def _sample(
        self,
        prepared: list[tuple[BatchItem, SamplingJob]],
        options: SamplingOptions,
        sent: dict[int, int],
    ) -> None:
        prepared = [(item, job) for item, job in prepared if not item.stopped]
        if not prepared:
            return
        metrics.BATCH_SIZE.observe(len(prepared))
        items = [item for item, _ in prepared]
        try:
            result = self.pipeline.sample_batch(
                [job for _, job in prepared], options, self._on_step(items, sent)
            )
        except torch.OutOfMemoryError:
            free_device_memory(self.pipeline.device)
            if len(prepared) == 1:
                logger.warning("job does not fit in device memory even alone")
                items[0].emit(Failure(OutOfMemory("the image does not fit in memory", "size")))
                return
            metrics.OOM_SPLITS.inc()
            half = len(prepared) // 2
            logger.warning("out of memory at batch %d; retrying as %d + %d",
                           len(prepared), half, len(prepared) - half)  # fmt: skip
            self._sample(prepared[:half], options, sent)
            self._sample(prepared[half:], options, sent)
            return
        finished = [items[j] for j in result.job_indices]
        self._decode(finished, result.latents, options)

    def _on_step(self, items: list[BatchItem], sent: dict[int, int]) -> BatchStepCallback:
        """Step timing, drops of stopped jobs, previews (``sent``: previews sent per item)."""
        last = time.perf_counter()

        def on_step(
            step: int, total: int, latents: torch.Tensor, active: tuple[int, ...]
        ) -> set[int]:
            nonlocal last
            now = time.perf_counter()
            metrics.STEP_SECONDS.observe(now - last)
            last = now
            drop = set()
            for row, index in enumerate(active):
                item = items[index]
                if item.stopped:
                    drop.add(index)
                    continue
                steps = item.request.preview_steps
                if step in steps and steps.index(step) >= sent.get(id(item), 0):
                    preview = latents_to_preview(latents[row : row + 1])[0]
                    item.emit(Preview(steps.index(step), preview))
                    sent[id(item)] = steps.index(step) + 1
            if drop:
                metrics.DROPPED.inc(len(drop))
                logger.info("dropping %d stopped jobs after step %d", len(drop), step)
            return drop

        return on_step

    # --- decoding ------------------------------------------------------------------------------
    def _decode(
        self, items: list[BatchItem], latents: torch.Tensor, options: SamplingOptions
    ) -> None:
        keep = [i for i, item in enumerate(items) if not item.stopped]
        set_vae_tiling(self.pipeline.vae, options.height, options.width, self.vae_tiling_min_side)
        for start in range(0, len(keep), self.decode_batch):
            chunk = keep[start : start + self.decode_batch]
            try:
                images = self._decode_chunk(latents[chunk])
            except torch.OutOfMemoryError:
                free_device_memory(self.pipeline.device)
                for i in chunk:
                    items[i].emit(Failure(OutOfMemory("the image does not fit in memory", "size")))
                continue
            for i, image in zip(chunk, images, strict=True):
                items[i].emit(Finished(image))
                metrics.IMAGES.inc()
                metrics.MEGAPIXELS.inc(options.height * options.width / 1e6)

    def _decode_chunk(self, latents: torch.Tensor) -> list[Image.Image]:
        try:
            return self.pipeline.decode(latents)
        except torch.OutOfMemoryError:
            free_device_memory(self.pipeline.device)
        if len(latents) > 1:
            logger.warning("out of memory decoding %d images; one at a time", len(latents))
            return [self._decode_chunk(latents[i : i + 1])[0] for i in range(len(latents))]
        logger.warning("out of memory decoding one image; retrying with VAE tiling")
        self.pipeline.vae.enable_tiling()
        return self.pipeline.decode(latents)
