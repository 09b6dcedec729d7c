"""Runs one batch on the de-tokenizer, blocking (the dispatcher calls it in its device thread).

The batch is an ``engine.step_batch.StepBatch`` (the engine's own loop, so a job's image equals
the reference pipeline's for the same seed). Each job is prepared alone (resampler, condition
latents, ViT features), so one bad job fails by itself, and joins the batch. After every step:

* jobs whose item reports ``stopped`` (cancelled, expired, reclaimed) leave at once;
* previews go out at the requested steps (each job at its own step);
* jobs past their last step leave, and wait for the VAE;
* with step-level batching (``admit`` given, issue 25) compatible waiting jobs *join*: a job
  arriving while a batch runs waits one step, not the whole batch;
* finished images are decoded at the next boundary, at most ``decode_batch`` per call, so
  decoding never stalls the others' denoising for more than one decode call. Jobs that joined
  together finish and decode together; a job that finishes alone decodes alone. Holding a
  finished image back for companions was measured and dropped: on the CPU tiny model at 128² a
  lone decode costs 20 ms against 12 ms per image in fours, while waiting up to 2 steps for a
  companion cost the waiting image 2 step times, and step-level p99 end-to-end went from 0.74 s
  to 1.49 s in ``seedx bench diffusion --arrivals poisson`` (max batch 16, 200 jobs).

The batch runs until no job is left in it or waiting for its decode; with ``admit`` absent
(batch-level batching, kept for comparison) no job joins, which is the old per-batch policy.

Out of memory in a step: the step is retried in UNet calls of half as many rows (whole jobs
each), then halves again; a job that does not fit even alone fails with ``out_of_memory`` and
the others go on. A decode that does not fit falls back to one image at a time, then to tiled
decoding.

Every item that is not stopped gets exactly one terminal output: ``Finished`` or ``Failure``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from engine.image_output import latents_to_preview
from engine.pipeline_inputs import EditJob, GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import ParameterError, SamplingJob, SamplingOptions
from engine.step_batch import StepBatch, StepReport
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

    @property
    def submitted(self) -> float:
        """``time.monotonic()`` when the job was queued (for its queue wait in steps)."""

    def emit(self, output: Output) -> None:
        """Hand an output to whoever waits for the job (thread-safe)."""


# admit(running jobs) -> waiting jobs that join the batch now (taken off the queue).
Admit = Callable[[int], Sequence["BatchItem"]]


class BatchRunner:
    """Prepares, samples and decodes batches on one ``DetokenizerPipeline``."""

    def __init__(
        self,
        pipeline: DetokenizerPipeline,
        *,
        decode_batch: int = 4,
        vae_tiling_min_side: int = 0,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.decode_batch = decode_batch
        self.vae_tiling_min_side = vae_tiling_min_side
        self.step_seconds: float | None = None  # the last step's wall time (queue wait in steps)
        # (jobs in the step, its seconds) after every step: the load bench's check that a replay
        # ran on the device its capacity was measured on (``workers.diffusion.load_bench``)
        self.on_step = on_step

    def run(self, items: Sequence[BatchItem], admit: Admit | None = None) -> None:
        """Runs one batch of requests sharing a ``BatchKey`` to its end; never raises."""
        started = time.perf_counter()
        members = [item for item in items if not item.stopped]
        if not members:
            return
        try:
            self._run(members, members[0].request.options, admit)
        except Exception:
            logger.exception("batch failed")
            for item in members:  # an item already answered ignores this (Ticket.emit)
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

    def _run(self, members: list[BatchItem], options: SamplingOptions, admit: Admit | None) -> None:
        """The step loop of the module docstring; ``members`` grows with every join."""
        batch: StepBatch[BatchItem] = self.pipeline.step_batch(options)
        self._join(batch, members, options)
        metrics.BATCH_SIZE.observe(len(batch))
        decodes: list[tuple[BatchItem, torch.Tensor]] = []
        max_rows: int | None = None
        joins = 0
        while len(batch) or decodes:
            if len(batch):
                last = time.perf_counter()
                try:
                    report = batch.step(max_rows)
                except torch.OutOfMemoryError:
                    max_rows = self._out_of_memory(batch, max_rows)
                    continue
                self.step_seconds = time.perf_counter() - last
                metrics.STEP_SECONDS.observe(self.step_seconds)
                if self.on_step is not None:
                    self.on_step(len(batch), self.step_seconds)
                metrics.UNET_ROWS.observe(batch.rows)
                self._after_step(batch, report)
                decodes.extend(batch.pop_finished())
            if admit is not None:
                joining = [item for item in admit(len(batch)) if not item.stopped]
                members.extend(joining)
                joins += len(joining)
                self._join(batch, joining, options)
            if decodes:
                chunk, decodes = decodes[: self.decode_batch], decodes[self.decode_batch :]
                self._decode(chunk, options)
        metrics.JOINS.observe(joins)

    # --- preparation ---------------------------------------------------------------------------
    def _prepare_one(self, request: DiffusionRequest, options: SamplingOptions) -> SamplingJob:
        job = request.engine_job
        if isinstance(job, GenerateJob):
            return self.pipeline.prepare_generate([job])[0]
        if isinstance(job, EditJob):
            return self.pipeline.prepare_edit([job], options)[0]
        return self.pipeline.prepare_reconstruct([job], options)[0]

    def _join(
        self, batch: StepBatch[BatchItem], items: Sequence[BatchItem], options: SamplingOptions
    ) -> None:
        """Prepares each item alone and adds it to ``batch``; a failure answers only its item."""
        now = time.monotonic()
        for item in items:
            request = item.request
            try:
                with bind_job(request.job_id, request.trace_id):  # this thread has no job context
                    batch.join([(item, self._prepare_one(request, options))])
            except ParameterError as exc:
                param = _WIRE_PARAMS.get(exc.param, exc.param)
                item.emit(Failure(BadRequest(str(exc), param)))
                continue
            except torch.OutOfMemoryError:
                free_device_memory(self.pipeline.device)
                item.emit(Failure(OutOfMemory("out of memory preparing the job", "size")))
                continue
            except Exception:
                with bind_job(request.job_id, request.trace_id):
                    logger.exception("preparing the job failed")
                item.emit(Failure(InternalError("internal error preparing the job")))
                continue
            if self.step_seconds:
                metrics.QUEUE_WAIT_STEPS.observe((now - item.submitted) / self.step_seconds)

    # --- sampling ------------------------------------------------------------------------------
    def _out_of_memory(self, batch: StepBatch[BatchItem], max_rows: int | None) -> int:
        """The row bound to retry the step with; fails the newest job once one job is too many."""
        free_device_memory(self.pipeline.device)
        if max_rows is not None and max_rows <= 1:
            newest = batch.tags[-1]
            logger.warning("job does not fit in device memory even alone")
            newest.emit(Failure(OutOfMemory("the image does not fit in memory", "size")))
            batch.drop({newest})
            return 1
        metrics.OOM_SPLITS.inc()
        rows = batch.rows if max_rows is None else max_rows
        logger.warning("out of memory at %d UNet rows; retrying with %d", rows, rows // 2)
        return max(1, rows // 2)

    def _after_step(self, batch: StepBatch[BatchItem], report: StepReport[BatchItem]) -> None:
        """Drops stopped jobs and sends the previews due at each job's step."""
        drop = set()
        for row, (item, step) in enumerate(zip(report.tags, report.steps, strict=True)):
            if item.stopped:
                drop.add(item)
                continue
            steps = item.request.preview_steps
            if step in steps:
                preview = latents_to_preview(report.latents[row : row + 1])[0]
                item.emit(Preview(steps.index(step), preview))
        if drop:
            metrics.DROPPED.inc(len(drop))
            logger.info("dropping %d stopped jobs", len(drop))
            batch.drop(drop)

    # --- decoding ------------------------------------------------------------------------------
    def _decode(
        self, finished: list[tuple[BatchItem, torch.Tensor]], options: SamplingOptions
    ) -> None:
        """One decode call (at most ``decode_batch`` images) for the jobs still waited for."""
        finished = [(item, latent) for item, latent in finished if not item.stopped]
        if not finished:
            return
        set_vae_tiling(self.pipeline.vae, options.height, options.width, self.vae_tiling_min_side)
        try:
            images = self._decode_chunk(torch.cat([latent for _, latent in finished]))
        except torch.OutOfMemoryError:
            free_device_memory(self.pipeline.device)
            for item, _ in finished:
                item.emit(Failure(OutOfMemory("the image does not fit in memory", "size")))
            return
        for (item, _), image in zip(finished, images, strict=True):
            item.emit(Finished(image))
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
