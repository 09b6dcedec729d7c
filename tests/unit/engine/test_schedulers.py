"""Scheduler registry (§2.8 and issue 5): names, configs, determinism inside a batch."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from engine.pipeline_inputs import GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import SamplingOptions
from engine.schedulers import SDXL_SCHEDULER_CONFIG, make_scheduler, scheduler_names
from tests.unit.engine.detok_fixtures import BATCH_TOLERANCE


def test_registry_names_and_classes() -> None:
    assert scheduler_names() == ("euler", "dpmsolver++", "ddim")
    assert isinstance(make_scheduler("euler", SDXL_SCHEDULER_CONFIG), EulerDiscreteScheduler)
    assert isinstance(make_scheduler("ddim", SDXL_SCHEDULER_CONFIG), DDIMScheduler)
    dpm = make_scheduler(
        "dpmsolver++", {**SDXL_SCHEDULER_CONFIG, "algorithm_type": "sde-dpmsolver++"}
    )
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert dpm.config.algorithm_type == "dpmsolver++"  # the deterministic variant, always


def test_euler_reproduces_the_sdxl_schedule() -> None:
    euler = make_scheduler("euler", SDXL_SCHEDULER_CONFIG)
    euler.set_timesteps(50)
    assert euler.timesteps[:3].tolist() == [981, 961, 941]
    assert euler.timesteps[-1].item() == 1
    assert float(euler.init_noise_sigma) == pytest.approx(13.158, abs=1e-3)


def test_each_call_gets_a_fresh_instance() -> None:
    assert make_scheduler("euler", SDXL_SCHEDULER_CONFIG) is not make_scheduler(
        "euler", SDXL_SCHEDULER_CONFIG
    )


def test_unknown_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="`scheduler`"):
        make_scheduler("euler_a", SDXL_SCHEDULER_CONFIG)


@pytest.mark.parametrize("name", ["euler", "dpmsolver++", "ddim"])
def test_every_scheduler_is_batch_invariant(first_stage: DetokenizerPipeline, name: str) -> None:
    options = SamplingOptions(64, 64, 3, name)
    g = torch.Generator().manual_seed(0)
    jobs = [GenerateJob(torch.randn(1, 64, 128, generator=g), seed=s) for s in (1, 2)]
    together = first_stage.sample(first_stage.prepare_generate(jobs), options)
    alone = first_stage.sample(first_stage.prepare_generate(jobs[1:]), options)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together[1:], alone, **BATCH_TOLERANCE)
