"""The parts of SEED-X's ``ContinuousLVLM`` around the LLM: resamplers and per-tile positions.

``SeedXAgent``'s state dict equals the keys of the released ``agent/pytorch_model.bin``
(§6.4): ``input_resampler.*``, ``output_resampler.*``, ``patch_pos_embed``. ``PictureEncoder``
groups the ViT with the input side (§5.1 steps 3-4); the reference and the vLLM model class both
call it, so there is one implementation of "pixels to LLM input embeddings".
"""

from __future__ import annotations

import torch
from torch import nn

from engine.arch import SeedXArch
from engine.resampler import Resampler
from engine.vit import QwenViT


class SeedXAgent(nn.Module):
    def __init__(self, arch: SeedXArch, llm_hidden: int) -> None:
        super().__init__()
        if arch.input_resampler.embed_dim != llm_hidden:
            raise ValueError(
                f"input_resampler.embed_dim {arch.input_resampler.embed_dim} != LLM hidden "
                f"{llm_hidden}"
            )
        if arch.output_resampler.kv_dim != llm_hidden:
            raise ValueError(
                f"output_resampler.kv_dim {arch.output_resampler.kv_dim} != LLM hidden {llm_hidden}"
            )
        self.input_resampler = Resampler(arch.input_resampler)
        self.output_resampler = Resampler(arch.output_resampler)
        self.patch_pos_embed = nn.Parameter(torch.zeros(arch.patch_pos_rows, llm_hidden))

    def tile_position(self, centres: torch.Tensor) -> torch.Tensor:
        """``[n, 2]`` tile centres -> ``[n, hidden]``: ``([x, y, 1-x, 1-y] / 2) @ P`` (§2.3)."""
        x, y = centres[:, 0:1], centres[:, 1:2]
        weights = torch.cat([x, y, 1 - x, 1 - y], dim=1) / 2
        return weights.to(self.patch_pos_embed.dtype) @ self.patch_pos_embed

    def visual_embedding(self, query_hidden: torch.Tensor) -> torch.Tensor:
        """Final-norm LLM states at the query positions ``[k, 64, H]`` -> ``[k, 64, D]`` (§5.2)."""
        return self.output_resampler(query_hidden.to(self.patch_pos_embed.dtype))


class PictureEncoder(nn.Module):
    """Pixels of the any-res pictures -> the 64 LLM input embeddings of each picture."""

    def __init__(self, vit: QwenViT, agent: SeedXAgent) -> None:
        super().__init__()
        self.vit = vit
        self.agent = agent

    def forward(self, pixels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """``[n, 3, 448, 448]``, ``[n, 2]`` -> ``[n, 64, hidden]``."""
        features = self.vit(pixels)
        return self.encode_features(features, centres)

    def encode_features(self, vit_features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        dtype = self.agent.patch_pos_embed.dtype
        embeds = self.agent.input_resampler(vit_features.to(dtype))
        return embeds + self.agent.tile_position(centres.to(embeds.device))[:, None, :]
