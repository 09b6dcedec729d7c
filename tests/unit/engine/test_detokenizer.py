"""ResamplerXLV2 against §6.5 (keys, shapes) and an independent formulation of §2.6."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from engine.arch import DetokenizerArch, SeedXArch
from engine.checkpoint.random_init import randomize_
from engine.detokenizer import ResamplerXLV2
from tests.unit.engine.detok_fixtures import spec_shapes


def test_keys_match_spec_for_tiny_arch(detok_arch: SeedXArch) -> None:
    resampler = ResamplerXLV2(detok_arch.detokenizer)
    got = {k: tuple(v.shape) for k, v in resampler.state_dict().items()}
    assert got == spec_shapes(detok_arch.detokenizer)


def test_full_seedx_shapes_on_meta_device() -> None:
    arch = DetokenizerArch()
    with torch.device("meta"):
        resampler = ResamplerXLV2(arch)
        got = {k: tuple(v.shape) for k, v in resampler.state_dict().items()}
        assert got == spec_shapes(arch)
        assert sum(p.numel() for p in resampler.parameters()) == pytest.approx(61.2e6, rel=0.01)
        for tokens in (64, 256):  # LLM path and reconstruction path (§8.3)
            embeds, pooled = resampler(torch.empty(1, tokens, 4096))
            assert embeds.shape == (1, 64, 2048)
            assert pooled.shape == (1, 1280)


def reference_forward(m: ResamplerXLV2, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """§2.6 written out plainly: per-head softmax(q k^T / sqrt(d)) and torch's MHA for the pool."""
    arch = m.arch
    latents = m.latents.expand(x.shape[0], -1, -1)
    x = m.proj_in(x)
    for attn, ff in m.layers:
        xn, ln = attn.norm1(x), attn.norm2(latents)
        q = attn.to_q(ln)
        k, v = attn.to_kv(torch.cat([xn, ln], dim=1)).split(arch.heads * arch.dim_head, dim=-1)
        heads = []
        for h in range(arch.heads):
            cols = slice(h * arch.dim_head, (h + 1) * arch.dim_head)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(arch.dim_head)
            heads.append(scores.softmax(-1) @ v[..., cols])
        latents = attn.to_out(torch.cat(heads, dim=-1)) + latents
        latents = ff[3](F.gelu(ff[1](ff[0](latents)))) + latents
    h = m.norm_out(latents)
    embeds = torch.cat([m.unet_proj_1(h), m.unet_proj_2(h)], dim=-1)
    pool = m.unet_attnpool
    seq = torch.cat([h.mean(1, keepdim=True), h], dim=1) + pool.positional_embedding
    seq = seq.transpose(0, 1)  # sequence-first, as the original
    out, _ = F.multi_head_attention_forward(
        seq, seq, seq, seq.shape[-1], arch.pool_heads,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, need_weights=False,
    )  # fmt: skip
    return embeds, out[0]


@pytest.mark.parametrize("tokens", [64, 256])
def test_forward_matches_plain_formulation(detok_arch: SeedXArch, tokens: int) -> None:
    resampler = randomize_(ResamplerXLV2(detok_arch.detokenizer), seed=3).eval()
    x = torch.randn(
        2, tokens, detok_arch.detokenizer.embedding_dim, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        embeds, pooled = resampler(x)
        ref_embeds, ref_pooled = reference_forward(resampler, x)
    assert embeds.shape == (2, 64, detok_arch.detokenizer.cross_attention_dim)
    assert pooled.shape == (2, detok_arch.detokenizer.output2_dim)
    torch.testing.assert_close(embeds, ref_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-4)


def test_rows_are_independent(detok_arch: SeedXArch) -> None:
    """One row per image embedding (§8.6): a row's output does not depend on its batch mates."""
    resampler = randomize_(ResamplerXLV2(detok_arch.detokenizer), seed=4).eval()
    x = torch.randn(3, 64, detok_arch.detokenizer.embedding_dim)
    with torch.no_grad():
        batch_embeds, batch_pooled = resampler(x)
        one_embeds, one_pooled = resampler(x[1:2])
    torch.testing.assert_close(batch_embeds[1:2], one_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batch_pooled[1:2], one_pooled, atol=1e-6, rtol=1e-5)


def test_normalize_flag_normalises_the_token_axis(detok_arch: SeedXArch) -> None:
    """``normalize=True`` is the original's ``F.normalize(x)``: dim=1, the token axis (§8)."""
    plain = randomize_(ResamplerXLV2(detok_arch.detokenizer), seed=5).eval()
    arch = dataclasses.replace(plain.arch, normalize=True)
    normed = ResamplerXLV2(arch).eval()
    normed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 64, arch.embedding_dim)
    token_axis = x / x.norm(dim=1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(normed(x)[0], plain(token_axis)[0])
        assert not torch.allclose(normed(x)[0], plain(x / x.norm(dim=2, keepdim=True))[0])
