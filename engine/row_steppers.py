"""Scheduler updates for a batch whose rows sit at *different* denoising steps (issue 25).

Step-level batching lets a job join a running batch at the next step, so one UNet call holds
jobs at several step indices, and the scheduler must update each row with its own sigma. A
diffusers scheduler steps a whole batch at one shared step index, so it cannot do that.

* Euler (the reference sampler, §2.8, and the default): :class:`EulerRows` is the diffusers
  update (epsilon prediction, no churn) written over a per-row sigma tensor. It performs the same
  IEEE operations in the same order as ``EulerDiscreteScheduler`` does with its 0-dim sigma, and
  rounds to the model's dtype where diffusers does (a 0-dim float32 tensor does not promote a
  float16 operand): in fp32 it is bit-for-bit the scheduler stepping each job alone. In fp16
  products are taken in float32 and rounded once (what CUDA kernels do with a 0-dim scalar; CPU
  kernels round the scalar to half first), so on the CPU fp16 differs by at most one half
  rounding per step (tests/unit/engine/test_row_steppers.py).
* Every other scheduler (DDIM, DPM-Solver++): :class:`PerJobRows` gives each job its own fresh
  diffusers instance and steps it on the job's rows alone. DPM-Solver++ keeps a per-job history
  and warms its order up per job, which a vectorised form would have to re-derive; its update is
  a few elementwise operations per job, negligible next to the UNet call, and stepping the real
  scheduler is equal to it by construction.

A stepper works on *jobs* (one latent each), not guidance rows; rows only exist for the UNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


class RowStepper(Protocol):
    """Per-job scheduler state of a step-level batch; ``steps[i]`` is job i's step index."""

    timesteps: torch.Tensor  # the shared schedule, [num_inference_steps]
    init_noise_sigma: float | torch.Tensor

    def add(self, count: int) -> None:
        """``count`` new jobs join at step 0 (appended after the running ones)."""

    def select(self, keep: Sequence[int]) -> None:
        """Keeps only jobs at positions ``keep`` (in that order)."""

    def scale(self, latents: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
        """The UNet input of each job's latent at its step (``scale_model_input``)."""

    def sigma(self, position: int, step: int) -> torch.Tensor | None:
        """Job ``position``'s sigma at ``step`` (None: the scheduler has no sigmas)."""

    def step(self, eps: torch.Tensor, latents: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
        """Every job's latent after its step; the jobs' step indices advance by one."""


def _rows(values: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
    """``values[steps]`` shaped ``[n, 1, 1, 1]`` to broadcast over latents."""
    index = torch.tensor(list(steps), device=values.device)
    return values[index].view(-1, 1, 1, 1)


class EulerRows:
    """``EulerDiscreteScheduler.step`` vectorised over per-row sigmas (module docstring)."""

    def __init__(self, scheduler: EulerDiscreteScheduler) -> None:
        config = scheduler.config
        if config.prediction_type != "epsilon":
            raise ValueError(f"EulerRows supports epsilon prediction, got {config.prediction_type}")
        self.timesteps = scheduler.timesteps
        self.init_noise_sigma = scheduler.init_noise_sigma
        self._sigmas = scheduler.sigmas.to(scheduler.timesteps.device)
        # scale_model_input's divisor, the same expression on every sigma at once
        self._input_scale = (self._sigmas**2 + 1) ** 0.5

    def add(self, count: int) -> None:
        """Euler keeps no per-job state."""

    def select(self, keep: Sequence[int]) -> None:
        """Euler keeps no per-job state."""

    def scale(self, latents: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
        divisor = _rows(self._input_scale, steps)
        return (latents.float() / divisor).to(latents.dtype)

    def sigma(self, position: int, step: int) -> torch.Tensor:
        return self._sigmas[step]

    def step(self, eps: torch.Tensor, latents: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
        sample = latents.to(torch.float32)
        sigma = _rows(self._sigmas, steps)  # sigma_hat: no churn, so sigma * (0 + 1) == sigma
        x0 = sample - (sigma * eps.float()).to(eps.dtype)
        derivative = (sample - x0) / sigma
        dt = _rows(self._sigmas, [s + 1 for s in steps]) - sigma
        return (sample + derivative * dt).to(eps.dtype)


class PerJobRows:
    """One fresh diffusers scheduler per job, each stepped on its own job (module docstring)."""

    def __init__(self, scheduler: SchedulerMixin) -> None:
        self._template = scheduler
        self.timesteps = scheduler.timesteps
        self.init_noise_sigma = scheduler.init_noise_sigma
        self._jobs: list[SchedulerMixin] = []

    def _fresh(self) -> SchedulerMixin:
        template = self._template
        scheduler = type(template).from_config(template.config)
        scheduler.set_timesteps(template.num_inference_steps, device=self.timesteps.device)
        return scheduler

    def add(self, count: int) -> None:
        self._jobs.extend(self._fresh() for _ in range(count))

    def select(self, keep: Sequence[int]) -> None:
        self._jobs = [self._jobs[i] for i in keep]

    def scale(self, latents: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
        return torch.cat(
            [
                scheduler.scale_model_input(latents[i : i + 1], self.timesteps[step])
                for i, (scheduler, step) in enumerate(zip(self._jobs, steps, strict=True))
            ]
        )

    def sigma(self, position: int, step: int) -> torch.Tensor | None:
        # the original edit pipeline's "sigma space" test: hasattr(scheduler, "sigmas")
        scheduler = self._jobs[position]
        return scheduler.sigmas[step] if hasattr(scheduler, "sigmas") else None

    def step(self, eps: torch.Tensor, latents: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
        return torch.cat(
            [
                scheduler.step(
                    eps[i : i + 1], self.timesteps[step], latents[i : i + 1], return_dict=False
                )[0]
                for i, (scheduler, step) in enumerate(zip(self._jobs, steps, strict=True))
            ]
        )


def row_stepper(
    scheduler: SchedulerMixin, num_inference_steps: int, device: torch.device
) -> RowStepper:
    """The stepper for a fresh ``scheduler``, its timesteps set for ``num_inference_steps``."""
    scheduler.set_timesteps(num_inference_steps, device=device)
    if isinstance(scheduler, EulerDiscreteScheduler) and scheduler.config.prediction_type == (
        "epsilon"
    ):
        return EulerRows(scheduler)
    return PerJobRows(scheduler)
