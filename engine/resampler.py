"""Qwen-style resamplers and the position tables they use (§2.2, §2.5, §7.4 of the model spec).

The same ``Resampler`` class serves as the ViT attention pool, the input resampler (ViT -> LLM)
and the output resampler (LLM -> ViT-feature space). Attribute names equal the released
checkpoint keys (``query``, ``pos_embed``, ``kv_proj``, ``attn.*``, ``ln_q``, ``ln_kv``), so the
state dicts load without renaming.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.arch import ResamplerArch


def sincos_2d_table(embed_dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table ``[grid*grid, embed_dim]`` in float32 (§2.2).

    Rows are grid cells in raster order; channels are four blocks of ``embed_dim/4``:
    sin(col*w), cos(col*w), sin(row*w), cos(row*w) with ``w_k = 10000^(-k/(embed_dim/4))``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    col_angles = cols.reshape(-1, 1) * omega[None]
    row_angles = rows.reshape(-1, 1) * omega[None]
    table = np.concatenate(
        [np.sin(col_angles), np.cos(col_angles), np.sin(row_angles), np.cos(row_angles)], axis=1
    )
    return torch.from_numpy(table.astype(np.float32))


def resize_pos_table(table: torch.Tensor, target_len: int) -> torch.Tensor:
    """Bicubic resize of a square ``[S*S, C]`` table to ``[T, C]`` as Qwen's ``get_abs_pos``.

    Runs in float32 with ``align_corners=False`` and casts back, so precomputing it once gives
    the same values as the reference, which recomputes it on every call (§7.4).
    """
    src = math.isqrt(table.shape[0])
    dst = math.isqrt(target_len)
    if src * src != table.shape[0] or dst * dst != target_len:
        raise ValueError(f"tables must be square grids, got {table.shape[0]} -> {target_len}")
    if src == dst:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(target_len, -1).to(table.dtype)


class Resampler(nn.Module):
    """One cross-attention layer from ``grid**2`` learned queries to the input tokens.

    ``forward(x [B, L, kv_dim]) -> [B, grid**2, embed_dim]``: ``kv = ln_kv(kv_proj(x))``; keys get
    the position table resized to ``sqrt(L)`` a side, queries the un-resized table; no residual,
    no FFN, no output norm.
    """

    def __init__(self, arch: ResamplerArch) -> None:
        super().__init__()
        self.arch = arch
        n = arch.grid * arch.grid
        self.query = nn.Parameter(torch.zeros(n, arch.embed_dim))
        # torch.empty(0).device honours an enclosing `with torch.device("meta")`.
        table = sincos_2d_table(arch.embed_dim, arch.grid).to(torch.empty(0).device)
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.kv_proj: nn.Module = (
            nn.Linear(arch.kv_dim, arch.embed_dim, bias=False)
            if arch.kv_dim != arch.embed_dim
            else nn.Identity()
        )
        self.attn = nn.MultiheadAttention(arch.embed_dim, arch.heads)
        self.ln_q = nn.LayerNorm(arch.embed_dim, eps=arch.ln_eps)
        self.ln_kv = nn.LayerNorm(arch.embed_dim, eps=arch.ln_eps)
        self._key_pos_cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def key_positions(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """The key position table for ``length`` inputs, resized once and cached (§7.4)."""
        key = (length, dtype, self.pos_embed.device)
        cached = self._key_pos_cache.get(key)
        if cached is None:
            cached = resize_pos_table(self.pos_embed.detach(), length).to(dtype)
            self._key_pos_cache[key] = cached
        return cached

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._key_pos_cache.clear()  # dtype/device moves invalidate the cache
        return super()._apply(fn, recurse)

    def load_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._key_pos_cache.clear()
        return super().load_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.ln_kv(self.kv_proj(x))
        pos_k = self.key_positions(x.shape[1], kv.dtype)
        q = self.ln_q(self.query) + self.pos_embed.to(kv.dtype)
        batch = x.shape[0]
        # nn.MultiheadAttention is sequence-first: [L, B, C].
        out, _ = self.attn(
            q.unsqueeze(1).expand(-1, batch, -1),
            (kv + pos_k.unsqueeze(0)).transpose(0, 1),
            kv.transpose(0, 1),
            need_weights=False,
        )
        return out.transpose(0, 1)
