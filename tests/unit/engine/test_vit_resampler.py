"""ViT and Qwen resampler against independent formulations of §2.1, §2.2, §7.3 and §7.4."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.agent import PictureEncoder, SeedXAgent
from engine.arch import ResamplerArch, SeedXArch, VitArch, tiny_arch
from engine.checkpoint.random_init import randomize_
from engine.resampler import Resampler, resize_pos_table, sincos_2d_table
from engine.vit import QwenViT, VisualAttention


def test_sincos_table_layout() -> None:
    dim, grid = 16, 8
    table = sincos_2d_table(dim, grid)
    assert table.shape == (64, 16)
    quarter = dim // 4
    row, col = 3, 5
    omega = [1 / 10000 ** (k / quarter) for k in range(quarter)]
    expected = (
        [math.sin(col * w) for w in omega]
        + [math.cos(col * w) for w in omega]
        + [math.sin(row * w) for w in omega]
        + [math.cos(row * w) for w in omega]
    )
    torch.testing.assert_close(table[row * grid + col], torch.tensor(expected), atol=1e-6, rtol=0)


def test_resize_pos_table_is_identity_at_same_size_and_bicubic_otherwise() -> None:
    table = torch.randn(64, 12)
    assert resize_pos_table(table, 64) is table
    resized = resize_pos_table(table, 256)
    grid = table.reshape(1, 8, 8, 12).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized, expected.permute(0, 2, 3, 1).reshape(256, 12))
    # row-major: the first spatial axis is the row, so row 0 of the output comes from row 0
    assert resized.shape == (256, 12)


def test_resize_runs_in_fp32_and_casts_back() -> None:
    table = torch.randn(16, 8).half()
    out = resize_pos_table(table, 64)
    assert out.dtype == torch.float16
    expected = resize_pos_table(table.float(), 64).half()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_per_head_fused_qkv_matches_standard_attention() -> None:
    """§7.3: in_proj permuted [heads, 3, hd, W] -> [3, heads, hd, W] is nn.MultiheadAttention."""
    width, heads = 48, 4
    hd = width // heads
    attn = randomize_(VisualAttention(width, heads), seed=1)
    x = torch.randn(2, 10, width)
    mha = nn.MultiheadAttention(width, heads, batch_first=True)
    w = (
        attn.in_proj.weight.reshape(heads, 3, hd, width)
        .permute(1, 0, 2, 3)
        .reshape(3 * width, width)
    )
    b = attn.in_proj.bias.reshape(heads, 3, hd).permute(1, 0, 2).reshape(3 * width)
    with torch.no_grad():
        mha.in_proj_weight.copy_(w)
        mha.in_proj_bias.copy_(b)
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
        expected, _ = mha(x, x, x, need_weights=False)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def _manual_resampler(r: Resampler, x: torch.Tensor) -> torch.Tensor:
    """§2.2 steps 1-4 written out with explicit matrices."""
    arch = r.arch
    kv = F.layer_norm(
        x @ r.kv_proj.weight.T, (arch.embed_dim,), r.ln_kv.weight, r.ln_kv.bias, arch.ln_eps
    )
    side = math.isqrt(x.shape[1])
    pk = resize_pos_table(r.pos_embed.detach(), side * side)
    q = F.layer_norm(r.query, (arch.embed_dim,), r.ln_q.weight, r.ln_q.bias, arch.ln_eps)
    q = q + r.pos_embed
    wq, wk, wv = r.attn.in_proj_weight.chunk(3)
    bq, bk, bv = r.attn.in_proj_bias.chunk(3)
    heads, hd = arch.heads, arch.embed_dim // arch.heads
    qh = (q @ wq.T + bq).reshape(-1, heads, hd).transpose(0, 1)
    outs = []
    for b in range(x.shape[0]):
        kh = ((kv[b] + pk) @ wk.T + bk).reshape(-1, heads, hd).transpose(0, 1)
        vh = (kv[b] @ wv.T + bv).reshape(-1, heads, hd).transpose(0, 1)
        att = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(hd), dim=-1) @ vh
        outs.append(
            att.transpose(0, 1).reshape(-1, arch.embed_dim) @ r.attn.out_proj.weight.T
            + r.attn.out_proj.bias
        )
    return torch.stack(outs)


@pytest.mark.parametrize("length", [64, 256])
def test_resampler_matches_written_out_math(length: int) -> None:
    r = randomize_(Resampler(ResamplerArch(grid=8, embed_dim=32, heads=4, kv_dim=24)), seed=2)
    x = torch.randn(2, length, 24)
    with torch.no_grad():
        torch.testing.assert_close(r(x), _manual_resampler(r, x), atol=1e-5, rtol=1e-4)


def test_resampler_position_cache_follows_dtype() -> None:
    r = randomize_(Resampler(ResamplerArch(grid=8, embed_dim=32, heads=4, kv_dim=24)), seed=2)
    x = torch.randn(1, 256, 24)
    with torch.no_grad():
        full = r(x)
        r.double()
        torch.testing.assert_close(r(x.double()).float(), full, atol=1e-5, rtol=1e-4)


def test_patch_position_embedding() -> None:
    arch = tiny_arch()
    agent = randomize_(SeedXAgent(arch, 128), seed=3)
    centres = torch.tensor([[0.25, 0.5], [0.75, 0.5], [0.5, 0.5]])
    out = agent.tile_position(centres)
    p = agent.patch_pos_embed.detach()
    torch.testing.assert_close(out[0], (torch.tensor([0.25, 0.5, 0.75, 0.5]) / 2) @ p)
    torch.testing.assert_close(out[2], p.mean(0))  # the global view gets the mean of the rows


def test_picture_encoder_shapes_tiny() -> None:
    arch = tiny_arch()
    encoder = PictureEncoder(randomize_(QwenViT(arch.vit), 4), randomize_(SeedXAgent(arch, 128), 5))
    with torch.no_grad():
        out = encoder(torch.randn(3, 3, 448, 448), torch.full((3, 2), 0.5))
    assert out.shape == (3, 64, 128)
    assert torch.isfinite(out).all()


def test_full_size_shapes_on_meta_device() -> None:
    """SEED-X-17B dimensions (§2.1-2.3) without allocating: parameter counts and output shapes."""
    arch = SeedXArch()
    with torch.device("meta"):
        vit = QwenViT(VitArch())
        agent = SeedXAgent(arch, 5120)
        feats = vit(torch.empty(3, 3, 448, 448))
        embeds = agent.input_resampler(feats)
        out = agent.output_resampler(torch.empty(1, 64, 5120))
    assert feats.shape == (3, 256, 4096)
    assert embeds.shape == (3, 64, 5120)
    assert out.shape == (1, 64, 4096)
    vit_params = sum(p.numel() for p in vit.parameters())
    assert abs(vit_params / 1e9 - 1.94) < 0.01
    in_params = sum(p.numel() for p in agent.input_resampler.parameters())
    out_params = sum(p.numel() for p in agent.output_resampler.parameters())
    assert abs(in_params / 1e6 - 126.5) < 0.2
    assert abs(out_params / 1e6 - 88.6) < 0.2
    assert vit.state_dict()["transformer.resblocks.0.attn.in_proj.weight"].shape == (4992, 1664)
