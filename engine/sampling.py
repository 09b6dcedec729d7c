"""Options, jobs and guidance of the SDXL denoising loop (§5.2 step 5, §5.3, §5.4).

A batch samples *independent jobs*: each job brings its own conditioning, seed and
guidance scale(s); the batch shares size, step count and scheduler. Every job expands into its
guidance branches (rows) and all rows of all jobs go through the UNet together, so the diffusion
worker (issue 5) batches jobs through exactly this code. A job's initial noise is drawn from its
own generator with its own ``[1, 4, h/8, w/8]`` shape and the schedulers are elementwise and
noise-free inside ``step`` (``engine.schedulers``), so a seed gives the same image whatever batch
it lands in, up to the UNet's batch-size-dependent kernel rounding. The loop itself, where jobs
join and leave between steps, is ``engine.step_batch``; this module holds what it is made of:
options, jobs, their guidance rows and the guidance mix.

Guidance per job:
* 4-channel UNet (first stage): rows ``[negative, positive]`` when ``guidance_scale > 1``
  (diffusers' order), else ``[positive]``; ``eps = eps_u + s * (eps_c - eps_u)``.
* 8-channel UNet (second stage): rows ``[(pos, cond), (neg, cond), (neg, zeros)]`` when
  ``s_t > 1 and s_i >= 1``, else ``[(pos, cond)]``;
  ``eps = eps_unc + s_t * (eps_text - eps_img) + s_i * (eps_img - eps_unc)``. The reference
  pipeline mixes ``x0 = x - sigma * eps`` instead; the weights (1 - s_i, s_t, s_i - s_t) sum to 1,
  so mixing eps directly is the same linear combination (only rounding differs).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from engine.schedulers import SCHEDULERS

MAX_STEPS = 150
MAX_SIDE = 4096
SIZE_MULTIPLE = 64
MAX_GUIDANCE = 50.0
LATENT_CHANNELS = 4

# callback(step_index, total_steps, latents [n_jobs, 4, h/8, w/8]) -> False to stop the batch.
StepCallback = Callable[[int, int, torch.Tensor], "bool | None"]
# on_step(step_index, total_steps, latents [k, 4, h/8, w/8], job_indices (k,)) -> the indices
# (into the batch's ``jobs``) of jobs to drop before the next step; empty/None keeps them all.
BatchStepCallback = Callable[[int, int, torch.Tensor, tuple[int, ...]], "Collection[int] | None"]


class ParameterError(ValueError):
    """A request parameter is invalid; ``param`` names it (diffusers ``check_inputs`` style)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"`{param}` {message}")
        self.param = param


class SamplingCancelled(Exception):
    """The step callback returned False: the batch stopped after ``step_index``."""

    def __init__(self, step_index: int) -> None:
        super().__init__(f"sampling cancelled after step {step_index}")
        self.step_index = step_index


@dataclass(frozen=True)
class Conditioning:
    """UNet conditioning of one image: ``prompt_embeds [1, Q, C]`` and ``pooled [1, P]``."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True)
class SamplingOptions:
    """What every job of one batch shares. Defaults: the reference's 1024², 50 Euler steps."""

    height: int = 1024
    width: int = 1024
    num_inference_steps: int = 50
    scheduler: str = "euler"

    def validate(self) -> None:
        """Raises ``ParameterError`` naming the first bad field."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ParameterError(name, f"must be an int, got {value!r}")
            if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= MAX_SIDE:
                raise ParameterError(
                    name,
                    f"must be a multiple of {SIZE_MULTIPLE} in [{SIZE_MULTIPLE}, {MAX_SIDE}], "
                    f"got {value}",
                )
        steps = self.num_inference_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise ParameterError(
                "num_inference_steps", f"must be an int in [1, {MAX_STEPS}], got {steps!r}"
            )
        if self.scheduler not in SCHEDULERS:
            raise ParameterError(
                "scheduler", f"must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}"
            )


@dataclass(frozen=True)
class SamplingJob:
    """One image to sample. ``condition_latent [1, 4, h/8, w/8]`` only for 8-channel UNets."""

    positive: Conditioning
    negative: Conditioning
    seed: int
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    condition_latent: torch.Tensor | None = None


def check_guidance(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(name, f"must be a finite number, got {value!r}")
    if not 0.0 <= value <= MAX_GUIDANCE:
        raise ParameterError(name, f"must be in [0, {MAX_GUIDANCE}], got {value}")


def resolve_seed(seed: int | None) -> int:
    """``None`` -> a fresh random seed (the reference's unseeded default), else the seed checked."""
    if seed is None:
        return secrets.randbits(63)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise ParameterError("seed", f"must be an int in [0, 2**64), got {seed!r}")
    return seed


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Two-branch classifier-free guidance."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def edit_guidance(
    eps_text: torch.Tensor, eps_img: torch.Tensor, eps_unc: torch.Tensor, s_t: float, s_i: float
) -> torch.Tensor:
    """InstructPix2Pix-style three-branch guidance of the edit pipeline (§5.3)."""
    return eps_unc + s_t * (eps_text - eps_img) + s_i * (eps_img - eps_unc)


def guided(job: SamplingJob, conditioned: bool) -> bool:
    """Whether the job runs its guidance branches (else only the conditional row)."""
    if conditioned:
        return job.guidance_scale > 1.0 and job.image_guidance_scale >= 1.0
    return job.guidance_scale > 1.0


def time_ids(height: int, width: int) -> list[int]:
    """SDXL micro-conditioning: original (h, w), crop (0, 0), target (h, w)."""
    return [height, width, 0, 0, height, width]


def _job_rows(
    job: SamplingJob, conditioned: bool
) -> list[tuple[Conditioning, torch.Tensor | None]]:
    pos, neg, cond = job.positive, job.negative, job.condition_latent
    if not conditioned:
        return [(neg, None), (pos, None)] if guided(job, False) else [(pos, None)]
    assert cond is not None
    if not guided(job, True):
        return [(pos, cond)]
    return [(pos, cond), (neg, cond), (neg, torch.zeros_like(cond))]


def _mix(
    job: SamplingJob,
    eps: torch.Tensor,
    conditioned: bool,
    latent: torch.Tensor,
    sigma: torch.Tensor | None,
) -> torch.Tensor:
    """One job's guided noise prediction from its branch rows.

    The edit pipeline of the original code mixes the three branches in x0-space when the
    scheduler has sigmas (``x0 = x - sigma * eps``, mixed, then ``eps = (x0 - x) / -sigma``).
    That equals mixing eps directly, but not in floating point, and random or real UNets amplify
    the difference over the steps (parity suite, docs/parity.md): we do the same operations.
    """
    if not guided(job, conditioned):
        return eps
    if conditioned:
        if sigma is not None:
            eps = latent - sigma * eps
        text, img, unc = eps.chunk(3)
        mixed = edit_guidance(text, img, unc, job.guidance_scale, job.image_guidance_scale)
        return mixed if sigma is None else (mixed - latent) / (-sigma)
    uncond, cond = eps.chunk(2)
    return cfg(uncond, cond, job.guidance_scale)


def _check_jobs(
    unet: UNet2DConditionModel, jobs: Sequence[SamplingJob], latent_hw: tuple[int, int]
) -> bool:
    if not jobs:
        raise ParameterError("jobs", "must hold at least one job")
    in_channels = unet.config.in_channels
    if in_channels not in (LATENT_CHANNELS, 2 * LATENT_CHANNELS):
        raise ValueError(f"UNet in_channels must be 4 or 8, got {in_channels}")
    conditioned = in_channels == 2 * LATENT_CHANNELS
    for job in jobs:
        check_guidance("guidance_scale", job.guidance_scale)
        check_guidance("image_guidance_scale", job.image_guidance_scale)
        cond = job.condition_latent
        if conditioned and (cond is None or tuple(cond.shape[-2:]) != latent_hw):
            raise ParameterError(
                "condition_latent",
                f"must be [1, 4, {latent_hw[0]}, {latent_hw[1]}] for an "
                f"8-channel UNet, got {None if cond is None else tuple(cond.shape)}",
            )
        if not conditioned and cond is not None:
            raise ParameterError("condition_latent", "is only for 8-channel (second-stage) UNets")
    return conditioned


def initial_latents(
    jobs: Sequence[SamplingJob],
    latent_hw: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
    init_noise_sigma: float | torch.Tensor,
) -> torch.Tensor:
    """Each job's noise from its own generator on ``device``, times ``init_noise_sigma``."""
    noise = [
        randn_tensor(
            (1, LATENT_CHANNELS, *latent_hw),
            generator=torch.Generator(device=device).manual_seed(job.seed),
            device=device,
            dtype=dtype,
        )
        for job in jobs
    ]
    return torch.cat(noise) * init_noise_sigma
