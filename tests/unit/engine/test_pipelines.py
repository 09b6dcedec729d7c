"""De-tokenizer pipelines (§5.2 step 5, §5.3, §5.4) on the tiny converted checkpoints."""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from engine.pipeline_inputs import EditJob, GenerateJob, ReconstructJob, pool_tokens
from engine.pipelines import DetokenizerPipeline
from engine.sampling import (
    Conditioning,
    ParameterError,
    SamplingCancelled,
    SamplingJob,
    SamplingOptions,
    cfg,
    edit_guidance,
)
from tests.unit.engine.detok_fixtures import BATCH_TOLERANCE

SMALL = SamplingOptions(height=64, width=64, num_inference_steps=2)


def embeds(seed: int, dim: int = 128, tokens: int = 64) -> torch.Tensor:
    return torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed))


def picture(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def record_unet(pipe: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records every UNet call (inputs cloned); the real forward still runs."""
    calls: list[dict[str, Any]] = []
    real = pipe.unet.forward

    def spy(sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        calls.append({"sample": sample.clone(), **kwargs})
        return real(sample, timestep, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    return calls


def test_generate_two_branch_batch_order_and_time_ids(
    first_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_unet(first_stage, monkeypatch)
    image = first_stage.generate(embeds(0), seed=1, height=64, width=128, num_inference_steps=2)
    assert image.size == (128, 64)
    assert len(calls) == 2
    first = calls[0]
    assert first["sample"].shape == (2, 4, 8, 16)  # [negative, positive] rows, h/8 x w/8
    ids = first["added_cond_kwargs"]["time_ids"]
    assert ids.tolist() == [[64, 128, 0, 0, 64, 128]] * 2
    negative = first_stage.negative_conditioning(pooled=True)
    (positive,) = first_stage.encode(embeds(0))
    torch.testing.assert_close(first["encoder_hidden_states"][0:1], negative.prompt_embeds)
    torch.testing.assert_close(first["encoder_hidden_states"][1:2], positive.prompt_embeds)
    torch.testing.assert_close(first["added_cond_kwargs"]["text_embeds"][0:1], negative.pooled)


def test_negative_is_vit_of_zeros_pooled_and_computed_once(
    first_stage: DetokenizerPipeline,
) -> None:
    vit = first_stage.vit
    assert vit is not None
    with torch.no_grad():
        tokens = vit(torch.zeros(1, 3, 448, 448))
    shipped = first_stage.negative_features()
    torch.testing.assert_close(shipped.tokens, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shipped.pooled, pool_tokens(tokens), atol=1e-5, rtol=1e-5)
    assert shipped.pooled.shape == (1, 64, 128)
    torch.testing.assert_close(shipped.pooled[0, 1], tokens[0, 4:8].mean(0))  # 1-D, not 2x2

    fresh = DetokenizerPipeline(
        first_stage.unet, first_stage.vae, mock.Mock(config={}), first_stage.resampler, vit=vit
    )
    with mock.patch.object(vit, "forward", wraps=vit.forward) as forward:
        fresh.negative_conditioning(pooled=True)
        fresh.negative_conditioning(pooled=False)
        fresh.negative_conditioning(pooled=True)
    assert forward.call_count == 1


def test_guidance_one_equals_the_conditional_branch(first_stage: DetokenizerPipeline) -> None:
    (positive,) = first_stage.encode(embeds(2))
    negative = first_stage.negative_conditioning(pooled=True)
    unguided = first_stage.sample(
        [SamplingJob(positive, negative, seed=5, guidance_scale=1.0)], SMALL
    )
    # Guidance 7.5 with the positive as its own negative: eps_u == eps_c, so eps = eps_c.
    self_neg = first_stage.sample(
        [SamplingJob(positive, positive, seed=5, guidance_scale=7.5)], SMALL
    )
    torch.testing.assert_close(unguided, self_neg, atol=1e-5, rtol=1e-5)
    u, c = torch.randn(2, 4, 8, 8).unbind(0)
    assert torch.equal(cfg(u, c, 1.0), u + (c - u))
    torch.testing.assert_close(cfg(u, c, 1.0), c)


def test_batch_invariance_same_seed_same_image(first_stage: DetokenizerPipeline) -> None:
    jobs = [
        GenerateJob(embeds(3), seed=11, guidance_scale=7.5),
        GenerateJob(embeds(4), seed=12, guidance_scale=3.0),
    ]
    together = first_stage.sample(first_stage.prepare_generate(jobs), SMALL)
    alone = [first_stage.sample(first_stage.prepare_generate([job]), SMALL) for job in jobs]
    assert not torch.allclose(together[0], together[1])
    for index in range(2):
        torch.testing.assert_close(together[index : index + 1], alone[index], **BATCH_TOLERANCE)
    images = first_stage.decode(together)
    assert [img.size for img in images] == [(64, 64), (64, 64)]
    for image, single in zip(images, alone, strict=True):
        (expected,) = first_stage.decode(single)
        diff = np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int))
        assert diff.max() <= 1  # the same picture, up to a rounding step


def test_mixed_guided_and_unguided_jobs_share_a_batch(first_stage: DetokenizerPipeline) -> None:
    jobs = [GenerateJob(embeds(5), seed=1, guidance_scale=1.0), GenerateJob(embeds(6), seed=2)]
    together = first_stage.sample(first_stage.prepare_generate(jobs), SMALL)
    alone = first_stage.sample(first_stage.prepare_generate(jobs[:1]), SMALL)
    torch.testing.assert_close(together[:1], alone, **BATCH_TOLERANCE)


def test_edit_three_branch_rows_and_formula(
    second_stage: DetokenizerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_unet(second_stage, monkeypatch)
    source = picture(1)
    second_stage.edit(embeds(7), source, height=64, width=64, num_inference_steps=1)
    (call,) = calls
    sample = call["sample"]
    assert sample.shape == (3, 8, 8, 8)
    cond = second_stage.encode_condition([source], 64, 64)
    torch.testing.assert_close(
        sample[0:2, 4:], cond.expand(2, -1, -1, -1)
    )  # (pos, cond), (neg, cond)
    assert torch.count_nonzero(sample[2, 4:]) == 0  # (neg, zeros)
    negative = second_stage.negative_conditioning(pooled=True)
    hidden = call["encoder_hidden_states"]
    torch.testing.assert_close(hidden[1:3], negative.prompt_embeds.expand(2, -1, -1))
    assert not torch.allclose(hidden[0:1], negative.prompt_embeds)

    text, img, unc = torch.randn(3, 4, 8, 8).unbind(0)
    mixed = edit_guidance(text, img, unc, 7.5, 1.5)
    # The reference mixes x0 = x - sigma * eps; the weights sum to 1, so it is the same mix.
    x, sigma = torch.randn(4, 8, 8), 3.7
    x0 = edit_guidance(x - sigma * text, x - sigma * img, x - sigma * unc, 7.5, 1.5)
    torch.testing.assert_close((x0 - x) / -sigma, mixed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed, unc + 7.5 * (text - img) + 1.5 * (img - unc))


def test_edit_condition_latent_is_unscaled_mode(second_stage: DetokenizerPipeline) -> None:
    source = picture(2, size=(50, 70))
    latent = second_stage.encode_condition([source], 64, 128)
    assert latent.shape == (1, 4, 8, 16)
    stretched = source.resize((128, 64), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(stretched, dtype=np.float32) / 255.0)
    with torch.no_grad():
        expected = second_stage.vae.encode(pixels.permute(2, 0, 1)[None] * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(latent, expected)  # no * scaling_factor (§8.4)


@pytest.mark.parametrize(("s_t", "s_i", "rows"), [(7.5, 1.5, 3), (1.0, 1.5, 1), (7.5, 0.5, 1)])
def test_edit_guidance_active_only_when_st_gt_1_and_si_ge_1(
    second_stage: DetokenizerPipeline,
    monkeypatch: pytest.MonkeyPatch,
    s_t: float,
    s_i: float,
    rows: int,
) -> None:
    calls = record_unet(second_stage, monkeypatch)
    job = EditJob(embeds(8), picture(3), seed=4, guidance_scale=s_t, image_guidance_scale=s_i)
    second_stage.edit_batch([job], SamplingOptions(64, 64, 1))
    assert calls[0]["sample"].shape[0] == rows


def test_edit_default_seed_is_42() -> None:
    assert EditJob(torch.zeros(1, 64, 128), picture(0)).seed == 42


def test_reconstruction_feeds_256_unpooled_tokens(first_stage: DetokenizerPipeline) -> None:
    resampler = first_stage.resampler
    with mock.patch.object(resampler, "forward", wraps=resampler.forward) as forward:
        image = first_stage.reconstruct(
            picture(4), seed=3, height=64, width=64, num_inference_steps=1
        )
    assert image.size == (64, 64)
    shapes = [tuple(call.args[0].shape) for call in forward.call_args_list]
    # The image's own tokens and the ViT(zeros) negative, both un-pooled (§8.3).
    assert shapes == [(1, 256, 128), (1, 256, 128)]
    expected = first_stage.vit_features([picture(4)])
    torch.testing.assert_close(forward.call_args_list[0].args[0], expected)


def test_conditioned_reconstruction_on_second_stage(second_stage: DetokenizerPipeline) -> None:
    job = ReconstructJob(picture(5), condition=picture(6), seed=42)
    (image,) = second_stage.reconstruct_batch([job], SamplingOptions(64, 64, 1))
    assert image.size == (64, 64)
    with pytest.raises(ParameterError, match="condition"):
        second_stage.reconstruct(picture(5), height=64, width=64, num_inference_steps=1)


def test_stage_checks(first_stage: DetokenizerPipeline, second_stage: DetokenizerPipeline) -> None:
    with pytest.raises(ValueError, match="second_stage"):
        first_stage.edit(embeds(0), picture(0), height=64, width=64, num_inference_steps=1)
    with pytest.raises(ValueError, match="first_stage"):
        second_stage.generate(embeds(0), height=64, width=64, num_inference_steps=1)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"height": 100}, "height"),
        ({"width": 32}, "width"),
        ({"width": 8192}, "width"),
        ({"height": 64.0}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 151}, "num_inference_steps"),
        ({"scheduler": "pndm"}, "scheduler"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_parameters_name_the_parameter(
    first_stage: DetokenizerPipeline, kwargs: dict[str, Any], param: str
) -> None:
    args: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 1, **kwargs}
    with pytest.raises(ParameterError, match=f"`{param}`") as info:
        first_stage.generate(embeds(0), **args)
    assert info.value.param == param


def test_bad_embedding_is_rejected(first_stage: DetokenizerPipeline) -> None:
    with pytest.raises(ParameterError, match="image_embeds"):
        first_stage.generate(embeds(0, dim=64), height=64, width=64, num_inference_steps=1)
    with pytest.raises(ParameterError, match="image_embeds"):
        first_stage.generate(torch.randn(2, 64, 128), height=64, width=64, num_inference_steps=1)


def test_callback_sees_every_step_and_can_cancel(first_stage: DetokenizerPipeline) -> None:
    steps: list[tuple[int, int, tuple[int, ...]]] = []

    def record(step: int, total: int, latents: torch.Tensor) -> bool:
        steps.append((step, total, tuple(latents.shape)))
        return True

    first_stage.generate(
        embeds(1), seed=0, height=64, width=64, num_inference_steps=3, callback=record
    )
    assert steps == [(0, 3, (1, 4, 8, 8)), (1, 3, (1, 4, 8, 8)), (2, 3, (1, 4, 8, 8))]

    seen: list[int] = []
    with pytest.raises(SamplingCancelled) as info:
        first_stage.generate(
            embeds(1), height=64, width=64, num_inference_steps=3,
            callback=lambda step, total, latents: seen.append(step) or False,
        )  # fmt: skip
    assert seen == [0]
    assert info.value.step_index == 0


def test_conditioning_rows_are_one_per_embedding(first_stage: DetokenizerPipeline) -> None:
    rows = first_stage.encode(torch.cat([embeds(1), embeds(2)]))
    assert len(rows) == 2
    assert isinstance(rows[0], Conditioning)
    assert rows[0].prompt_embeds.shape == (1, 64, 96)
    assert rows[0].pooled.shape == (1, 64)


def test_edit_branches_mix_in_x0_space_bit_for_bit_like_the_original() -> None:
    """Regression (issue 14): the original edit pipeline mixes x0 = x - sigma * eps and converts
    back; mixing eps directly is equal in exact arithmetic only, and the parity suite's
    second-stage sampling drifted by 2.7e-5 after 4 steps on random weights. Same operations,
    same bits."""
    from engine.sampling import Conditioning, SamplingJob, _mix

    generator = torch.Generator().manual_seed(3)
    eps = torch.randn(3, 4, 8, 8, generator=generator)
    x = torch.randn(1, 4, 8, 8, generator=generator) * 13
    sigma = torch.tensor(7.31)
    cond = Conditioning(torch.zeros(1, 2, 3), torch.zeros(1, 3))
    job = SamplingJob(cond, cond, 0, 7.5, 1.5, torch.zeros(1, 4, 8, 8))
    # the original's statements (pipeline_stable_diffusion_xl_t2i_edit.py), in order
    x0 = torch.cat([x] * 3) - sigma * eps
    text, img, unc = x0.chunk(3)
    want = (unc + 7.5 * (text - img) + 1.5 * (img - unc) - x) / (-sigma)
    assert torch.equal(_mix(job, eps, True, x, sigma), want)
    # without sigmas (e.g. DDIM) the original mixes eps as they are
    text, img, unc = eps.chunk(3)
    assert torch.equal(_mix(job, eps, True, x, None), unc + 7.5 * (text - img) + 1.5 * (img - unc))
