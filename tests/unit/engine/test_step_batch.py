"""Step-level batching in the engine (issue 25): jobs join a running batch between steps.

A job's final latent must not depend on when it joined or with whom it ran: alone, in a fixed
batch, or joined mid-run with companions at other steps. The only allowed difference is the
UNet's batch-size-dependent kernel rounding (the rows of one call share GEMMs whose blocking
depends on the batch). Measured on the tiny de-tokenizer in fp32 on the CPU: at most 2.0e-6 of
the largest latent value (``MEASURED`` holds 5x that), inside ``BATCH_TOLERANCE`` (atol 1e-4,
rtol 1e-3), the bound the fixed-batch tests already hold; these tests hold both.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from engine.pipeline_inputs import EditJob, GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import SamplingJob, SamplingOptions
from engine.step_batch import StepBatch
from tests.unit.engine.detok_fixtures import BATCH_TOLERANCE

# Largest difference measured here: 2.0e-6 of the largest latent value (about 17 fp32 ulps after
# 5 steps of a random tiny UNet); held at 5x that, relative to the latents' scale.
MEASURED = 1e-5


def embeds(seed: int) -> torch.Tensor:
    return torch.randn(1, 64, 128, generator=torch.Generator().manual_seed(seed))


def run_joined(
    pipe: DetokenizerPipeline, jobs: list[SamplingJob], joins: list[int], options: SamplingOptions
) -> tuple[dict[int, torch.Tensor], list[int]]:
    """Job i joins at batch step ``joins[i]``; returns final latents and the rows per UNet call."""
    rows: list[int] = []
    real = pipe.unet.forward

    def spy(sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        rows.append(sample.shape[0])
        assert timestep.shape == (sample.shape[0],)  # one timestep per row
        return real(sample, timestep, **kwargs)

    pipe.unet.forward = spy  # type: ignore[method-assign]
    try:
        batch: StepBatch[int] = pipe.step_batch(options)
        done: dict[int, torch.Tensor] = {}
        tick = 0
        while len(done) < len(jobs):
            batch.join([(i, job) for i, job in enumerate(jobs) if joins[i] == tick])
            if len(batch):
                batch.step()
                done.update(batch.pop_finished())
            tick += 1
    finally:
        del pipe.unet.forward
    return done, rows


def assert_equal_latents(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a - b).abs().max() <= MEASURED * b.abs().max()
    torch.testing.assert_close(a, b, **BATCH_TOLERANCE)


def test_a_job_joined_mid_run_equals_it_alone_and_in_a_fixed_batch(
    first_stage: DetokenizerPipeline,
) -> None:
    options = SamplingOptions(64, 64, 5)
    jobs = first_stage.prepare_generate(
        [GenerateJob(embeds(1), seed=1), GenerateJob(embeds(2), seed=2, guidance_scale=1.0),
         GenerateJob(embeds(3), seed=3, guidance_scale=3.0), GenerateJob(embeds(4), seed=4)]
    )  # fmt: skip
    done, rows = run_joined(first_stage, jobs, [0, 2, 2, 4], options)
    # 2 rows; +1 +2 at step 2; +2 at step 4; job 0 leaves after its 5th call, jobs 1-2 after 7
    assert rows == [2, 2, 5, 5, 7, 5, 5, 2, 2]
    fixed = first_stage.sample_batch(jobs, options).latents
    for i, job in enumerate(jobs):
        alone = first_stage.sample([job], options)
        assert_equal_latents(done[i], alone)
        assert_equal_latents(done[i], fixed[i : i + 1])


def test_three_branch_edits_join_mid_run(second_stage: DetokenizerPipeline) -> None:
    options = SamplingOptions(64, 64, 4)
    source = Image.new("RGB", (64, 64), (200, 30, 90))
    jobs = second_stage.prepare_edit(
        [EditJob(embeds(4), source, seed=4), EditJob(embeds(5), source.rotate(90), seed=5),
         EditJob(embeds(6), source, seed=6, guidance_scale=1.0)],
        options,
    )  # fmt: skip
    done, rows = run_joined(second_stage, jobs, [0, 1, 3], options)
    assert rows == [3, 6, 6, 7, 4, 1, 1]
    for i, job in enumerate(jobs):
        assert_equal_latents(done[i], second_stage.sample([job], options))


def test_chunked_step_equals_one_call(first_stage: DetokenizerPipeline) -> None:
    """The out-of-memory fallback: a step in chunks of whole jobs gives the same latents."""
    options = SamplingOptions(64, 64, 2)
    jobs = first_stage.prepare_generate([GenerateJob(embeds(i), seed=i) for i in range(3)])
    one: StepBatch[int] = first_stage.step_batch(options)
    chunked: StepBatch[int] = first_stage.step_batch(options)
    one.join(list(enumerate(jobs)))
    chunked.join(list(enumerate(jobs)))
    for _ in range(2):
        expected = one.step().latents
        assert_equal_latents(chunked.step(max_rows=3).latents, expected)
