"""The denoising loop: a batch whose jobs each sit at their own step (issue 25), and ``sample``.

:class:`StepBatch` is the one sampling loop of the project. Jobs *join* it between steps (each
starts at step 0 with its own seeded noise), every :meth:`~StepBatch.step` runs *one* UNet call
over the guidance rows of all jobs, each row at its own job's timestep (the UNet takes a per-row
timestep tensor), mixes each job's branches with its own guidance (``engine.sampling._mix``)
and updates each job with its own sigma (``engine.row_steppers``). Jobs leave when they finish
their last step (:meth:`~StepBatch.pop_finished`) or when dropped (cancellation).

Nothing in a job's arithmetic depends on the others: its noise comes from its own generator, its
conditioning rows are its own, the guidance mix and the scheduler update are per job and
elementwise. So a job's image is the same alone, in a fixed batch or joined mid-run, up to the
UNet's batch-size-dependent kernel rounding (measured in tests/unit/engine/test_step_batch.py).

``sample_batch`` (a fixed batch that may only lose jobs) and ``sample`` are this loop with every
job joined before the first step: the engine's pipelines and the diffusion worker share it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from diffusers import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from engine.batch_rows import BatchRows
from engine.row_steppers import RowStepper, row_stepper
from engine.sampling import (
    BatchStepCallback,
    SamplingCancelled,
    SamplingJob,
    SamplingOptions,
    StepCallback,
    _check_jobs,
    _job_rows,
    _mix,
    initial_latents,
    time_ids,
)

T = TypeVar("T")


@dataclass(frozen=True)
class StepReport(Generic[T]):
    """After a step: ``latents[i]`` is job ``tags[i]``'s, which just ran step ``steps[i]``."""

    tags: tuple[T, ...]
    steps: tuple[int, ...]
    latents: torch.Tensor


class StepBatch(Generic[T]):
    """Running jobs sharing size, step count and scheduler, each at its own step (see module)."""

    def __init__(
        self, unet: UNet2DConditionModel, scheduler: SchedulerMixin, options: SamplingOptions
    ) -> None:
        """``scheduler`` must be a fresh instance; it only provides the schedule and its class."""
        options.validate()
        self.unet = unet
        self.options = options
        # once: diffusers' unet.device/dtype walk every module on each access
        first = next(unet.parameters())
        self._device, self._dtype = first.device, first.dtype
        self.total = options.num_inference_steps
        self._latent_hw = (options.height // 8, options.width // 8)
        self._stepper: RowStepper = row_stepper(scheduler, self.total, self._device)
        self._ids = torch.tensor(
            [time_ids(options.height, options.width)], device=self._device, dtype=self._dtype
        )
        self._tags: list[T] = []
        self._jobs: list[SamplingJob] = []
        self._steps: list[int] = []  # the next step of each job
        self._latents: torch.Tensor | None = None
        self._rows: BatchRows | None = None
        self._conditioned = unet.config.in_channels == 8

    def __len__(self) -> int:
        return len(self._tags)

    @property
    def tags(self) -> tuple[T, ...]:
        return tuple(self._tags)

    @property
    def rows(self) -> int:
        """Guidance rows of the next UNet call."""
        return 0 if self._rows is None else len(self._rows)

    def join(self, tagged: Sequence[tuple[T, SamplingJob]]) -> None:
        """Jobs start at step 0 with the next step; raises ``ParameterError`` for a bad job."""
        if not tagged:
            return
        jobs = [job for _, job in tagged]
        self._conditioned = _check_jobs(self.unet, jobs, self._latent_hw)
        device, dtype = self._device, self._dtype
        noise = initial_latents(
            jobs, self._latent_hw, device, dtype, self._stepper.init_noise_sigma
        )
        per_job = [
            [(c.prompt_embeds, c.pooled, cond) for c, cond in _job_rows(job, self._conditioned)]
            for job in jobs
        ]
        rows = BatchRows.stack(per_job, device, dtype)
        self._rows = rows if self._rows is None else self._rows.concat(rows)
        self._latents = noise if self._latents is None else torch.cat([self._latents, noise])
        self._tags.extend(tag for tag, _ in tagged)
        self._jobs.extend(jobs)
        self._steps.extend([0] * len(jobs))
        self._stepper.add(len(jobs))

    @torch.no_grad()
    def step(self, max_rows: int | None = None) -> StepReport[T]:
        """Advances every job by one step; one UNet call (or several of at most ``max_rows``
        rows, whole jobs each: the out-of-memory fallback). Nothing changes if it raises."""
        assert self._rows is not None
        assert self._latents is not None
        rows, latents, steps = self._rows, self._latents, self._steps
        model_in = self._stepper.scale(latents, steps)[rows.gather]
        if rows.cond is not None:
            model_in = torch.cat([model_in, rows.cond], dim=1)
        row_steps = torch.tensor(steps, device=latents.device)[rows.gather]
        timesteps = self._stepper.timesteps[row_steps]
        eps_rows = torch.cat(
            [
                self.unet(
                    model_in[a:b],
                    timesteps[a:b],
                    encoder_hidden_states=rows.embeds[a:b],
                    added_cond_kwargs={
                        "text_embeds": rows.pooled[a:b],
                        "time_ids": self._ids.repeat(b - a, 1),
                    },
                    return_dict=False,
                )[0]
                for a, b in self._chunks(max_rows)
            ]
        )
        eps = torch.cat(
            [
                _mix(job, eps_rows[a:b], self._conditioned, latents[i : i + 1],
                     self._stepper.sigma(i, steps[i]))
                for i, (job, (a, b)) in enumerate(zip(self._jobs, rows.spans, strict=True))
            ]
        )  # fmt: skip
        self._latents = self._stepper.step(eps, latents, steps)
        self._steps = [s + 1 for s in steps]
        return StepReport(tuple(self._tags), tuple(steps), self._latents)

    def _chunks(self, max_rows: int | None) -> list[tuple[int, int]]:
        """Row ranges of whole jobs, each at most ``max_rows`` rows (a lone job may exceed it)."""
        assert self._rows is not None
        if max_rows is None:
            return [(0, len(self._rows))]
        chunks: list[tuple[int, int]] = []
        for a, b in self._rows.spans:
            if chunks and b - chunks[-1][0] <= max_rows:
                chunks[-1] = (chunks[-1][0], b)
            else:
                chunks.append((a, b))
        return chunks

    def drop(self, tags: Collection[T]) -> None:
        """Jobs ``tags`` leave the batch (their rows stop costing UNet work at once)."""
        if tags:
            self._keep([i for i, tag in enumerate(self._tags) if tag not in tags])

    def pop_finished(self) -> list[tuple[T, torch.Tensor]]:
        """Removes the jobs that ran their last step; returns them with their final latents."""
        done = [i for i, s in enumerate(self._steps) if s >= self.total]
        if not done:
            return []
        assert self._latents is not None
        finished = [(self._tags[i], self._latents[i : i + 1]) for i in done]
        self._keep([i for i, s in enumerate(self._steps) if s < self.total])
        return finished

    def _keep(self, keep: list[int]) -> None:
        assert self._rows is not None
        assert self._latents is not None
        self._tags = [self._tags[i] for i in keep]
        self._jobs = [self._jobs[i] for i in keep]
        self._steps = [self._steps[i] for i in keep]
        self._stepper.select(keep)
        if keep:
            self._rows = self._rows.select(keep)
            self._latents = self._latents[keep]
        else:
            self._rows, self._latents = None, None


@dataclass(frozen=True)
class BatchResult:
    """What ``sample_batch`` returns: final latents of the jobs that ran to the end.

    ``latents[i]`` belongs to ``jobs[job_indices[i]]``; dropped jobs are absent.
    """

    latents: torch.Tensor
    job_indices: tuple[int, ...]


def sample_batch(
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    jobs: Sequence[SamplingJob],
    options: SamplingOptions,
    on_step: BatchStepCallback | None = None,
) -> BatchResult:
    """Runs ``jobs`` as one fixed batch; jobs can be dropped between steps.

    ``on_step`` runs after every step with the latents of the jobs still running and their
    indices in ``jobs``; the indices it returns leave the batch before the next step, so a job
    nobody waits for stops costing UNet work at once (issue 5: cancellation inside a batch).
    When every job is dropped the loop ends at once. ``scheduler`` must be a fresh instance.
    """
    batch: StepBatch[int] = StepBatch(unet, scheduler, options)
    _check_jobs(unet, jobs, (options.height // 8, options.width // 8))
    batch.join(list(enumerate(jobs)))
    finished: dict[int, torch.Tensor] = {}
    while len(batch):
        report = batch.step()
        if on_step is not None:
            batch.drop(on_step(report.steps[0], batch.total, report.latents, report.tags) or ())
        finished.update(batch.pop_finished())
    indices = tuple(sorted(finished))
    if not indices:
        hw = (options.height // 8, options.width // 8)
        return BatchResult(torch.zeros(0, 4, *hw, device=unet.device, dtype=unet.dtype), ())
    return BatchResult(torch.cat([finished[i] for i in indices]), indices)


def sample(
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    jobs: Sequence[SamplingJob],
    options: SamplingOptions,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Runs the denoising loop for ``jobs``; returns their final latents ``[n, 4, h/8, w/8]``.

    ``scheduler`` must be a fresh instance. ``callback`` runs after every step with the batch
    latents; returning ``False`` raises ``SamplingCancelled``.
    """

    def on_step(step: int, total: int, latents: torch.Tensor, _: tuple[int, ...]) -> None:
        if callback is not None and callback(step, total, latents) is False:
            raise SamplingCancelled(step)

    return sample_batch(unet, scheduler, jobs, options, on_step).latents
