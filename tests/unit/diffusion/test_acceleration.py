"""Placement and speed options: defaults per device, SDPA, xformers refusal, compile, tiling."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from engine.pipeline_inputs import GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import SamplingOptions
from tests.unit.diffusion.support import embedding, worker_settings
from workers.diffusion.acceleration import (
    SpeedOptions,
    apply_speed_options,
    resolve_placement,
    set_vae_tiling,
)
from workers.diffusion.worker import load_pipeline, request_limits

SMALL = SamplingOptions(64, 64, 2)


def test_placement_defaults_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_placement("cpu", "auto") == resolve_placement("cpu", "float32")
    assert resolve_placement("cpu", "auto").dtype == torch.float32
    assert resolve_placement("cuda", "auto").dtype == torch.float16
    assert resolve_placement("cuda", "bfloat16").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_placement("auto", "auto").device == torch.device("cpu")
    with pytest.raises(ValueError, match="float16 on CPU"):
        resolve_placement("cpu", "float16")
    with pytest.raises(ValueError, match="dtype"):
        resolve_placement("cpu", "int8")


def test_sdpa_is_the_default_attention(first_stage: DetokenizerPipeline) -> None:
    apply_speed_options(first_stage, SpeedOptions())
    processors = list(first_stage.unet.attn_processors.values())
    assert processors
    assert all(isinstance(p, AttnProcessor2_0) for p in processors)


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers installed")
def test_xformers_without_the_package_is_a_startup_error(
    first_stage: DetokenizerPipeline,
) -> None:
    with pytest.raises(ValueError, match="xformers"):
        apply_speed_options(first_stage, SpeedOptions(attention="xformers"))


def test_compile_and_channels_last_keep_the_image(first_stage: DetokenizerPipeline) -> None:
    jobs = first_stage.prepare_generate([GenerateJob(torch.from_numpy(embedding(1))[None], 3)])
    one_step = SamplingOptions(64, 64, 1)
    plain = first_stage.sample(jobs, one_step)
    options = SpeedOptions(compile=True, compile_backend="eager", channels_last=True)
    apply_speed_options(first_stage, options)
    assert type(first_stage.unet).__name__ == "OptimizedModule"
    assert first_stage.stage == "first_stage"  # config and device reach through the wrapper
    torch.testing.assert_close(first_stage.sample(jobs, one_step), plain, atol=1e-4, rtol=1e-4)


def test_vae_tiling_only_for_large_images(first_stage: DetokenizerPipeline) -> None:
    vae: Any = first_stage.vae
    assert set_vae_tiling(vae, 64, 2048, 2048)
    assert vae.use_tiling
    assert not set_vae_tiling(vae, 1024, 1024, 2048)
    assert not vae.use_tiling
    assert set_vae_tiling(vae, 64, 64, 0)  # 0: always


def test_load_pipeline_from_settings(detok_root: Path) -> None:
    settings = worker_settings(detok_root, detokenizer="second_stage", load_vit=False)
    pipeline = load_pipeline(settings)
    assert pipeline.stage == "second_stage"
    assert pipeline.vit is None
    limits = request_limits(pipeline, settings)
    assert (limits.stage, limits.embedding_tokens, limits.can_reconstruct) == (
        "second_stage",
        64,
        False,
    )


def test_warmup_runs_on_both_stages(
    first_stage: DetokenizerPipeline, second_stage: DetokenizerPipeline
) -> None:
    from workers.diffusion.runner import BatchRunner

    BatchRunner(first_stage).warmup()
    BatchRunner(second_stage).warmup()
