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

from collections.abc import Callable
from dataclasses import dataclass
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


def sdxl_unet_config(in_channels: int = 4) -> dict[str, Any]:
    """SDXL-base's own ``unet/config.json`` (§2.6): 2.57 B parameters, 4 or 8 input channels."""
    return {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }


def sdxl_vae_config() -> dict[str, Any]:
    """SDXL-base's ``vae/config.json``: 84 M parameters."""
    return {
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


@dataclass(frozen=True)
class Weights:
    """Where random modules are built and how they are stored: ``device`` fills them (a GPU
    makes SDXL-size modules fast), ``dtype`` is what goes to disk (the release is fp32)."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> Any:
    """``nn.Module.to(dtype)``: diffusers' own ``to`` logs a spurious warning for random models."""
    return torch.nn.Module.to(module, dtype)


def build_unet(
    config: dict[str, Any], seed: int, weights: Weights = Weights()
) -> UNet2DConditionModel:
    with torch.device(weights.device):
        unet = UNet2DConditionModel.from_config(config)
    return _cast(randomize_(unet, seed), weights.dtype)


def write_sdxl_base(
    root: Path,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    seed: int,
    weights: Weights = Weights(),
) -> Path:
    """Writes ``root/stable-diffusion-xl-base-1.0/{unet,vae,scheduler}``; returns that folder."""
    base = root / layout.SDXL_DIR
    unet = build_unet(unet_config, seed, weights)
    unet.save_pretrained(base / "unet")
    del unet
    with torch.device(weights.device):
        vae = AutoencoderKL.from_config(vae_config)
    _cast(randomize_(vae, seed + 1), weights.dtype).save_pretrained(base / "vae")
    EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG).save_pretrained(base / "scheduler")
    return base


def write_tiny_sdxl_base(root: Path, arch: SeedXArch, seed: int) -> Path:
    """The tiny SDXL-like base of ``seedx make-tiny``."""
    return write_sdxl_base(root, tiny_unet_config(arch), tiny_vae_config(), seed)


def _resampler_state(arch: SeedXArch, seed: int, weights: Weights) -> dict[str, torch.Tensor]:
    with torch.device(weights.device):
        resampler = ResamplerXLV2(arch.detokenizer)
    _cast(randomize_(resampler, seed), weights.dtype)
    return {f"resampler.{k}": v.to("cpu").contiguous() for k, v in resampler.state_dict().items()}


def write_detokenizers(
    root: Path,
    arch: SeedXArch,
    unet_config: Callable[[int], dict[str, Any]],
    seed: int,
    weights: Weights = Weights(),
) -> list[Path]:
    """Writes both released de-tokenizer checkpoints (``torch.save`` state dicts, §6.5).

    ``unet_config(in_channels)`` sizes the UNets; one stage is built, written and freed before
    the next, so an SDXL-size tree needs one UNet in memory at a time.
    """
    paths = []
    for stage in ("first_stage", "second_stage"):
        if stage == "first_stage":
            state = _resampler_state(arch, seed, weights)
            unet = build_unet(unet_config(4), seed + 1, weights)  # k/v differ from the base's
            state.update(
                {f"unet.{k}": v.to("cpu") for k, v in unet.state_dict().items() if is_kv_weight(k)}
            )
        else:
            state = _resampler_state(arch, seed + 2, weights)
            unet = build_unet(unet_config(8), seed + 3, weights)
            state.update(
                {f"unet.{k}": v.to("cpu").contiguous() for k, v in unet.state_dict().items()}
            )
        del unet
        path = layout.released_detokenizer_file(root, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(sorted(state.items())), path)
        del state
        paths.append(path)
    return paths


def write_tiny_detokenizers(root: Path, arch: SeedXArch, seed: int) -> list[Path]:
    """The tiny de-tokenizers of ``seedx make-tiny``."""
    return write_detokenizers(root, arch, lambda ch: tiny_unet_config(arch, in_channels=ch), seed)
