"""A tiny SDXL-like diffusers base and tiny de-tokenizer checkpoints in the released layout.

The configs have every structural feature of SDXL-base that SEED-X relies on (§2.6-§2.8): a
text-time UNet conditioned on ``cross_attention_dim = output1 + output2`` states and a pooled
``output2`` vector with 6 micro-conditioning ids, cross-attention blocks with several
transformer blocks (so ``transformer_blocks.{j}`` keys exist), linear projections, a VAE that
downsamples by 8 into 4 latent channels with SDXL's ``scaling_factor`` and ``force_upcast``, and
SDXL's Euler scheduler config. Only widths and depths shrink. The real SEED-X path reads
SDXL-base's own ``config.json`` files through the same code.

``write_tiny_detokenizers`` writes ``seed_detokenizer/{first,second}_stage/pytorch_model.bin``
with exactly the §6.5 key sets: ``resampler.*`` plus, for the first stage, the ``to_k``/``to_v``
weights of every attention layer, and for the second stage the whole 8-channel UNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

from engine.arch import SeedXArch
from engine.checkpoint import layout
from engine.checkpoint.random_init import randomize_
from engine.detokenizer import ResamplerXLV2
from engine.schedulers import SDXL_SCHEDULER_CONFIG

TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)
TINY_TIME_EMBED_DIM = 8  # SDXL: 256


def is_kv_weight(name: str) -> bool:
    """The UNet weights the first stage trains (``full_ft=False``): every attention's k and v."""
    return name.endswith((".to_k.weight", ".to_v.weight"))


def tiny_unet_config(arch: SeedXArch, in_channels: int = 4) -> dict[str, Any]:
    """SDXL-base's ``unet/config.json`` with tiny widths.

    Same three levels as SDXL (no attention at full latent resolution, cross-attention at 1/2
    and 1/4, SDXL's 1/2/10 transformer blocks shrunk to 1/1/2) so that 1024² stays cheap:
    about 0.2 s per two-branch step on one CPU core pair.
    """
    det = arch.detokenizer
    return {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": TINY_TIME_EMBED_DIM,
        "attention_head_dim": [1, 2, 4],  # diffusers' legacy name: heads per level (dim 16)
        "block_out_channels": [16, 32, 64],
        "center_input_sample": False,
        "cross_attention_dim": det.cross_attention_dim,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 16,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": det.output2_dim + TIME_IDS * TINY_TIME_EMBED_DIM,
        "sample_size": 16,
        "transformer_layers_per_block": [1, 1, 2],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }


def tiny_vae_config() -> dict[str, Any]:
    """SDXL's ``vae/config.json`` shape: 4 levels (downsampling by 8), 4 latent channels."""
    return {
        "act_fn": "silu",
        "block_out_channels": [8, 16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": 128,
        "scaling_factor": 0.13025,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def build_unet(config: dict[str, Any], seed: int) -> UNet2DConditionModel:
    return randomize_(UNet2DConditionModel.from_config(config), seed)


def write_tiny_sdxl_base(root: Path, arch: SeedXArch, seed: int) -> Path:
    """Writes ``root/stable-diffusion-xl-base-1.0/{unet,vae,scheduler}``; returns that folder."""
    base = root / layout.SDXL_DIR
    build_unet(tiny_unet_config(arch), seed).save_pretrained(base / "unet")
    vae = randomize_(AutoencoderKL.from_config(tiny_vae_config()), seed + 1)
    vae.save_pretrained(base / "vae")
    EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    return base


def _resampler_state(arch: SeedXArch, seed: int) -> dict[str, torch.Tensor]:
    resampler = randomize_(ResamplerXLV2(arch.detokenizer), seed)
    return {f"resampler.{k}": v.contiguous() for k, v in resampler.state_dict().items()}


def write_tiny_detokenizers(root: Path, arch: SeedXArch, seed: int) -> list[Path]:
    """Writes both released de-tokenizer checkpoints (``torch.save`` state dicts, §6.5)."""
    first = _resampler_state(arch, seed)
    unet = build_unet(tiny_unet_config(arch), seed + 1)  # k/v differ from the base's values
    first.update({f"unet.{k}": v for k, v in unet.state_dict().items() if is_kv_weight(k)})

    second = _resampler_state(arch, seed + 2)
    unet8 = build_unet(tiny_unet_config(arch, in_channels=8), seed + 3)
    second.update({f"unet.{k}": v.contiguous() for k, v in unet8.state_dict().items()})

    paths = []
    for stage, state in (("first_stage", first), ("second_stage", second)):
        path = layout.released_detokenizer_file(root, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(sorted(state.items())), path)
        paths.append(path)
    return paths
