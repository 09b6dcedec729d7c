"""Qwen-VL ViT-bigG with attention pool (§2.1 of the model spec), Qwen's own key names.

The state dict of ``QwenViT`` equals the keys of the released ``QwenViT/qwen_vit_G.pt``
(Qwen-VL-Chat's ``transformer.visual.*`` without the prefix), so the released file loads
unchanged. The trunk's fused ``attn.in_proj`` is laid out **per head** as ``[q_h, k_h, v_h]``
(§7.3); we keep that layout and split it with a reshape, rather than re-ordering weights at
load time, so one set of weights serves the released tree and the serving tree alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.arch import ResamplerArch, VitArch
from engine.resampler import Resampler, resize_pos_table


class VisualAttention(nn.Module):
    """Self-attention with Qwen's per-head fused QKV (``in_proj``) and ``out_proj``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # [B, L, heads, 3*hd]: for head h, channels [h*3hd, h*3hd+hd) are q, then k, then v.
        qkv = self.in_proj(x).view(batch, length, self.heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class VisualMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class VisualAttentionBlock(nn.Module):
    def __init__(self, arch: VitArch) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(arch.width, eps=arch.ln_eps)
        self.ln_2 = nn.LayerNorm(arch.width, eps=arch.ln_eps)
        self.attn = VisualAttention(arch.width, arch.heads)
        self.mlp = VisualMLP(arch.width, arch.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisualTrunk(nn.Module):
    """Holds ``resblocks`` so that keys read ``transformer.resblocks.{i}.*`` as in Qwen."""

    def __init__(self, arch: VitArch) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(VisualAttentionBlock(arch) for _ in range(arch.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class QwenViT(nn.Module):
    """``forward(pixels [n, 3, 448, 448]) -> [n, pool_grid**2, output_dim]``, CLIP-normalised."""

    def __init__(self, arch: VitArch) -> None:
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(
            3, arch.width, kernel_size=arch.patch_size, stride=arch.patch_size, bias=False
        )
        self.positional_embedding = nn.Parameter(torch.zeros(arch.pos_grid**2, arch.width))
        self.ln_pre = nn.LayerNorm(arch.width, eps=arch.ln_eps)
        self.transformer = VisualTrunk(arch)
        self.attn_pool = Resampler(
            ResamplerArch(
                grid=arch.pool_grid,
                embed_dim=arch.output_dim,
                heads=arch.pool_heads,
                kv_dim=arch.width,
                ln_eps=arch.ln_eps,
            )
        )
        self.ln_post = nn.LayerNorm(arch.output_dim, eps=arch.ln_eps)
        self.proj = nn.Parameter(torch.zeros(arch.output_dim, arch.output_dim))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels.to(self.dtype))  # [n, width, 32, 32]
        x = x.flatten(2).transpose(1, 2)  # [n, 1024, width], raster order
        x = x + resize_pos_table(self.positional_embedding, x.shape[1]).to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        x = self.ln_post(self.attn_pool(x))
        return x @ self.proj
