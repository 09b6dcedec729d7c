"""Schedulers by name, each built fresh from the stored SDXL scheduler config.

SEED-X samples with ``EulerDiscreteScheduler`` on SDXL-base's config (§2.8), so "euler" is the
default and reproduces the reference. The others are offered for speed/quality trade-offs and
reuse the same training-noise schedule (betas, prediction type, spacing) through
``from_config``, the diffusers way of swapping samplers.

Every entry is *deterministic* given the initial noise (no noise injected inside ``step``):
that is what lets independent jobs share one UNet batch and still get "same seed, same image"
whatever the batch (issue 5). Ancestral or SDE samplers would need per-job noise inside the
loop; they are deliberately not listed.

Schedulers are stateful (timesteps, step index, multistep history), so a pipeline builds a new
one per sampling run instead of sharing an instance between concurrent runs. In a step-level
batch every job is at its own step: ``engine.row_steppers`` updates each job with its own sigma
(Euler, vectorised) or its own scheduler instance (the others).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

DEFAULT_SCHEDULER = "euler"

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "euler": EulerDiscreteScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
}

# The SDXL-base scheduler config (§2.8), as stored in stable-diffusion-xl-base-1.0/scheduler.
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def scheduler_names() -> tuple[str, ...]:
    return tuple(SCHEDULERS)


def make_scheduler(name: str, config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler ``name`` built ``from_config`` of a stored scheduler config.

    Raises ``ValueError`` for an unknown name, listing the known ones.
    """
    try:
        klass = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"`scheduler` must be one of {sorted(SCHEDULERS)}, got {name!r}") from None
    if name == "dpmsolver++":
        # Pin the deterministic variant even if a stored config names an SDE one.
        return klass.from_config(dict(config), algorithm_type="dpmsolver++")
    return klass.from_config(dict(config))
