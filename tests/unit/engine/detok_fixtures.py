"""Helpers shared by the de-tokenizer tests (the fixtures themselves live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.arch import DetokenizerArch, SeedXArch
from engine.checkpoint import layout
from engine.checkpoint.random_init import randomize_
from engine.checkpoint.sdxl import write_tiny_detokenizers, write_tiny_sdxl_base
from engine.vit import QwenViT

# Same seed, different batch: equal up to the UNet's batch-size-dependent fp32 kernel rounding,
# which guidance (x7.5) and sigma ~14 latents amplify to ~1e-5 absolute.
BATCH_TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}


def write_detok_tree(root: Path, arch: SeedXArch, seed: int = 0) -> Path:
    """The de-tokenizer part of a released tree (what ``make-tiny`` writes for it)."""
    root.mkdir(parents=True, exist_ok=True)
    arch.save(root)
    write_tiny_sdxl_base(root, arch, seed)
    write_tiny_detokenizers(root, arch, seed + 1)
    vit_file = root / layout.VIT_FILE
    vit_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(randomize_(QwenViT(arch.vit), seed + 2, bf16_exact=True).state_dict(), vit_file)
    return root


def spec_shapes(arch: DetokenizerArch) -> dict[str, tuple[int, ...]]:
    """The ``resampler.*`` keys of §6.5 (without the prefix), written out from the spec."""
    d, e, q = arch.dim, arch.embedding_dim, arch.num_queries
    inner, ff = arch.heads * arch.dim_head, arch.dim * arch.ff_mult
    shapes: dict[str, tuple[int, ...]] = {
        "latents": (1, q, d),
        "proj_in.weight": (d, e),
        "proj_in.bias": (d,),
        "norm_out.weight": (d,),
        "norm_out.bias": (d,),
        "unet_proj_1.weight": (arch.output1_dim, d),
        "unet_proj_1.bias": (arch.output1_dim,),
        "unet_proj_2.weight": (arch.output2_dim, d),
        "unet_proj_2.bias": (arch.output2_dim,),
        "unet_attnpool.positional_embedding": (q + 1, d),
        "unet_attnpool.c_proj.weight": (arch.output2_dim, d),
        "unet_attnpool.c_proj.bias": (arch.output2_dim,),
    }
    for name in ("q", "k", "v"):
        shapes[f"unet_attnpool.{name}_proj.weight"] = (d, d)
        shapes[f"unet_attnpool.{name}_proj.bias"] = (d,)
    for i in range(arch.depth):
        attn, mlp = f"layers.{i}.0.", f"layers.{i}.1."
        for norm in ("norm1", "norm2"):
            shapes[f"{attn}{norm}.weight"] = (d,)
            shapes[f"{attn}{norm}.bias"] = (d,)
        shapes[f"{attn}to_q.weight"] = (inner, d)
        shapes[f"{attn}to_kv.weight"] = (2 * inner, d)
        shapes[f"{attn}to_out.weight"] = (d, inner)
        shapes[f"{mlp}0.weight"] = (d,)
        shapes[f"{mlp}0.bias"] = (d,)
        shapes[f"{mlp}1.weight"] = (ff, d)
        shapes[f"{mlp}3.weight"] = (d, ff)
    return shapes
