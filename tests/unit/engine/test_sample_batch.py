"""``sample_batch``: dropping jobs from a running batch (issue 5's in-batch cancellation)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from engine.pipeline_inputs import EditJob, GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import SamplingOptions
from tests.unit.engine.detok_fixtures import BATCH_TOLERANCE


def embeds(seed: int) -> torch.Tensor:
    return torch.randn(1, 64, 128, generator=torch.Generator().manual_seed(seed))


def unet_rows(pipe: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row count of every UNet call (the real forward still runs)."""
    rows: list[int] = []
    real = pipe.unet.forward

    def spy(sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        rows.append(sample.shape[0])
        return real(sample, timestep, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    return rows


@pytest.mark.parametrize("scheduler", ["euler", "dpmsolver++", "ddim"])
def test_dropped_job_leaves_the_others_unchanged(
    first_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    options = SamplingOptions(64, 64, 4, scheduler)
    jobs = first_stage.prepare_generate(
        [GenerateJob(embeds(1), seed=1), GenerateJob(embeds(2), seed=2, guidance_scale=1.0),
         GenerateJob(embeds(3), seed=3)]
    )  # fmt: skip
    alone = first_stage.sample_batch([jobs[0], jobs[2]], options)
    rows = unet_rows(first_stage, monkeypatch)
    seen: list[tuple[int, tuple[int, ...]]] = []

    def on_step(step: int, total: int, latents: torch.Tensor, active: tuple[int, ...]) -> Any:
        seen.append((step, active))
        assert latents.shape[0] == len(active)
        return {1} if step == 1 else None

    result = first_stage.sample_batch(jobs, options, on_step)
    assert result.job_indices == (0, 2)
    assert seen == [(0, (0, 1, 2)), (1, (0, 1, 2)), (2, (0, 2)), (3, (0, 2))]
    assert rows == [5, 5, 4, 4]  # 2 + 1 + 2 rows, then job 1's single row is gone
    torch.testing.assert_close(result.latents, alone.latents, **BATCH_TOLERANCE)


def test_dropping_every_job_ends_the_loop(
    first_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = first_stage.prepare_generate([GenerateJob(embeds(1), seed=1)])
    rows = unet_rows(first_stage, monkeypatch)
    result = first_stage.sample_batch(
        jobs, SamplingOptions(64, 64, 5), lambda step, total, latents, active: set(active)
    )
    assert rows == [2]
    assert result.job_indices == ()
    assert result.latents.shape == (0, 4, 8, 8)


def test_edit_rows_and_condition_follow_the_drop(second_stage: DetokenizerPipeline) -> None:
    options = SamplingOptions(64, 64, 3)
    source = Image.new("RGB", (64, 64), (200, 30, 90))
    jobs = second_stage.prepare_edit(
        [EditJob(embeds(4), source, seed=4), EditJob(embeds(5), source.rotate(90), seed=5)],
        options,
    )
    alone = second_stage.sample_batch(jobs[1:], options)
    result = second_stage.sample_batch(
        jobs, options, lambda step, total, latents, active: {0} if step == 0 else None
    )
    assert result.job_indices == (1,)
    torch.testing.assert_close(result.latents, alone.latents, **BATCH_TOLERANCE)


def test_sample_keeps_its_contract(first_stage: DetokenizerPipeline) -> None:
    jobs = first_stage.prepare_generate([GenerateJob(embeds(6), seed=6)])
    options = SamplingOptions(64, 64, 2)
    torch.testing.assert_close(
        first_stage.sample(jobs, options), first_stage.sample_batch(jobs, options).latents
    )
