"""Deterministic random weights for tiny checkpoints.

PyTorch's default initialisers draw from the global RNG and leave some of our parameters at zero
(learned queries, ``proj``, position tables), which would hide bugs (a zero ``proj`` makes every
ViT output equal). We draw every tensor from one seeded generator instead, in sorted-name order,
so the same seed always gives the same bytes, whatever the module construction order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Stored sin-cos tables of the Qwen resamplers are fixed functions, not learned: keep them.
_FIXED_SUFFIXES = (".pos_embed", "pos_embed")


def randomize_(module: nn.Module, seed: int, *, bf16_exact: bool = False) -> nn.Module:
    """Fills every parameter of ``module`` in place from ``seed``.

    Norm weights get ``1 + 0.1·N(0,1)``, biases ``0.02·N(0,1)``, matrices and other tensors
    ``N(0,1)/sqrt(fan_in)``, which keeps activations O(1) through a few layers. With
    ``bf16_exact`` the values are rounded to bfloat16 first, like Qwen-VL's released ViT.
    """
    generator = torch.Generator().manual_seed(seed)
    norm_params = {
        f"{name}.{pname}" if name else pname
        for name, sub in module.named_modules()
        if isinstance(sub, (nn.LayerNorm, nn.GroupNorm)) or type(sub).__name__.endswith("RMSNorm")
        for pname, _ in sub.named_parameters(recurse=False)
    }
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
            if name.endswith(_FIXED_SUFFIXES) and not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if name in norm_params and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.02 * noise
            else:
                fan_in = param.shape[-1] if param.dim() == 2 else max(1, param[0].numel())
                value = noise / math.sqrt(fan_in)
            if bf16_exact:
                value = value.to(torch.bfloat16).float()
            param.copy_(value.to(param.dtype))
    return module
