"""ResamplerXLV2: the de-tokenizer adapter that turns ViT-space features into SDXL conditioning.

§2.6 of the model spec. ``forward(x [B, L, embedding_dim])`` returns the UNet's cross-attention
states ``[B, num_queries, output1_dim + output2_dim]`` and the pooled "text" embedding
``[B, output2_dim]``. ``L`` is 64 on the LLM path and 256 on the reconstruction path (§8.3); the
Perceiver has no key position code, so both work.

Attribute names reproduce the released state-dict keys of §6.5 exactly (``latents``,
``proj_in``, ``layers.{i}.0.{norm1,norm2,to_q,to_kv,to_out}``, ``layers.{i}.1.{0,1,3}``,
``norm_out``, ``unet_proj_{1,2}``, ``unet_attnpool.*``), so the ``resampler.*`` part of either
de-tokenizer checkpoint loads with a plain ``load_state_dict`` after stripping the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.arch import DetokenizerArch


def feed_forward(dim: int, mult: int, eps: float) -> nn.Sequential:
    """LN -> Linear (no bias) -> exact GELU -> Linear (no bias); indices 0, 1, 3 hold weights."""
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim, eps=eps),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to ``[x ; latents]`` (open_flamingo style, as in the SEED-X code).

    q and k are each scaled by ``dim_head**-0.25`` before the product (more stable in fp16 than
    scaling the product), and the softmax runs in fp32 and is cast back: both are parity
    details of §7.1/§7.2, which is why this is not ``scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, dim_head: int, heads: int, eps: float) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, length, _ = t.shape
        return t.view(batch, length, self.heads, -1).transpose(1, 2)  # [B, h, L, d]

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        batch, length, _ = latents.shape
        q = self._heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        scale = self.dim_head**-0.25
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.to_out(out)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pool over a token sequence ``[B, seq_len, dim] -> [B, output_dim]``.

    The mean token is prepended, a learned ``[seq_len + 1, dim]`` table is added, and multi-head
    self-attention with separate q/k/v projections runs over all ``seq_len + 1`` tokens; the
    output at position 0 goes through ``c_proj``. Only row 0 of the attention output is ever
    used, so only the mean token's query is computed: the same numbers as the full
    ``F.multi_head_attention_forward`` of the original, for 1/(seq_len+1) of the query work.
    """

    def __init__(self, seq_len: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.zeros(seq_len + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        batch, length, dim = x.shape
        head_dim = dim // self.heads
        q = self.q_proj(x[:, :1]).view(batch, 1, self.heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, 1, head_dim]
        return self.c_proj(out.transpose(1, 2).reshape(batch, dim))


class ResamplerXLV2(nn.Module):
    """The SDXL adapter resampler of SEED-X (§2.6 steps 1-7).

    ``normalize=True`` reproduces the original ``F.normalize(x)``, whose default ``dim=1`` is the
    *token* axis of ``[B, L, C]`` (§8). Released configs disable it ("no_normalize"); it is kept
    as written so a config that enables it behaves like the original.
    """

    def __init__(self, arch: DetokenizerArch) -> None:
        super().__init__()
        self.arch = arch
        dim = arch.dim
        self.latents = nn.Parameter(torch.zeros(1, arch.num_queries, dim))
        self.proj_in = nn.Linear(arch.embedding_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, arch.dim_head, arch.heads, arch.ln_eps),
                    feed_forward(dim, arch.ff_mult, arch.ln_eps),
                ]
            )
            for _ in range(arch.depth)
        )
        self.norm_out = nn.LayerNorm(dim, eps=arch.ln_eps)
        self.unet_proj_1 = nn.Linear(dim, arch.output1_dim)
        self.unet_proj_2 = nn.Linear(dim, arch.output2_dim)
        self.unet_attnpool = AttentionPool2d(
            arch.num_queries, dim, arch.pool_heads, arch.output2_dim
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_in.weight.dtype

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, L, embedding_dim]`` -> (prompt embeds [B, Q, o1+o2], pooled [B, o2])."""
        x = x.to(self.dtype)
        if self.arch.normalize:
            x = F.normalize(x)  # dim=1: the token axis, as the original (§8)
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:  # type: ignore[misc]
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        hidden = self.norm_out(latents)
        prompt_embeds = torch.cat([self.unet_proj_1(hidden), self.unet_proj_2(hidden)], dim=-1)
        return prompt_embeds, self.unet_attnpool(hidden)
