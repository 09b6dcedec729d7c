"""The serving de-tokenizer folder: its file names, its manifest, and loading it into a pipeline.

``OUT/detokenizer/<stage>/`` as written by ``engine.checkpoint.convert_detokenizer``::

    seedx_detokenizer.json      manifest: stage, in_channels, dtype, defaults, shapes
    unet/ vae/ scheduler/       diffusers folders (``from_pretrained`` reads them as they are)
    resampler/                  config.json (DetokenizerArch fields) + model.safetensors
    vit/                        config.json (VitArch fields) + model.safetensors (Qwen key names)
    negative.safetensors        ViT(zeros) features: ``pooled`` [1,64,D], ``tokens`` [1,256,D] fp32
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from torch import nn

from engine.arch import DetokenizerArch, VitArch
from engine.checkpoint import layout
from engine.checkpoint.errors import CheckpointError
from engine.detokenizer import ResamplerXLV2
from engine.pipeline_inputs import NegativeFeatures
from engine.pipelines import STAGE_CHANNELS, DetokenizerPipeline
from engine.schedulers import make_scheduler
from engine.vit import QwenViT

FORMAT_VERSION = 1
UNET_DIR, VAE_DIR, SCHEDULER_DIR = "unet", "vae", "scheduler"
RESAMPLER_DIR, VIT_DIR = "resampler", "vit"
MODULE_CONFIG, MODULE_WEIGHTS = "config.json", "model.safetensors"
SCHEDULER_CONFIG = "scheduler_config.json"
NEGATIVE_FILE = "negative.safetensors"
NEGATIVE_POOLED, NEGATIVE_TOKENS = "pooled", "tokens"
# diffusers skips the random init of a 2.6 B UNet only with accelerate; ask for it when present
# (asking without it just logs a warning and falls back).
LOW_CPU_MEM = importlib.util.find_spec("accelerate") is not None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's ``seedx_detokenizer.json``, checked for a known format and stage."""
    path = folder / layout.DETOKENIZER_MANIFEST
    if not path.is_file():
        raise CheckpointError(f"missing file: {path} (run `seedx convert` first)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported format_version {manifest.get('format_version')}"
        )
    if STAGE_CHANNELS.get(manifest.get("stage", "")) != manifest.get("in_channels"):
        raise CheckpointError(
            f"{path}: stage {manifest.get('stage')!r} does not match in_channels "
            f"{manifest.get('in_channels')}"
        )
    return manifest


def _load_module(module: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    state = load_file(str(path))
    expected = module.state_dict()
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            raise CheckpointError(f"{path}: missing key {key!r}")
        if key not in expected:
            raise CheckpointError(f"{path}: unexpected key {key!r}")
        if state[key].shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: key {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state, assign=True)


def load_resampler(folder: Path) -> ResamplerXLV2:
    config = json.loads((folder / RESAMPLER_DIR / MODULE_CONFIG).read_text())
    with torch.device("meta"):
        resampler = ResamplerXLV2(DetokenizerArch(**config))
    _load_module(resampler, folder / RESAMPLER_DIR / MODULE_WEIGHTS)
    return resampler


def load_vit(folder: Path) -> QwenViT:
    config = json.loads((folder / VIT_DIR / MODULE_CONFIG).read_text())
    with torch.device("meta"):
        vit = QwenViT(VitArch(**config))
    _load_module(vit, folder / VIT_DIR / MODULE_WEIGHTS)
    return vit


def load_negative(folder: Path) -> NegativeFeatures:
    path = folder / NEGATIVE_FILE
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    tensors = load_file(str(path))
    for key in (NEGATIVE_POOLED, NEGATIVE_TOKENS):
        if key not in tensors:
            raise CheckpointError(f"{path}: missing key {key!r}")
    return NegativeFeatures(pooled=tensors[NEGATIVE_POOLED], tokens=tensors[NEGATIVE_TOKENS])


def load_detokenizer(
    folder: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    with_vit: bool = True,
    progress: bool = False,
) -> DetokenizerPipeline:
    """A ready ``DetokenizerPipeline`` from a serving de-tokenizer folder.

    First stage -> ``generate``/``reconstruct``; second stage -> ``edit``/conditioned
    ``reconstruct``. ``with_vit=False`` skips the ViT (1.9 B parameters at full size): generation
    and edit only need the precomputed negative; reconstruction then raises.
    """
    from tqdm import tqdm

    folder = Path(folder)
    manifest = read_manifest(folder)
    # unet, vae, resampler, (vit), negative: the UNet is most of the time at full size
    bar = tqdm(total=4 + with_vit, desc=f"load {folder.name}", unit="part", disable=not progress)
    unet = UNet2DConditionModel.from_pretrained(
        folder / UNET_DIR, torch_dtype=dtype, low_cpu_mem_usage=LOW_CPU_MEM
    )
    if unet.config.in_channels != manifest["in_channels"]:
        raise CheckpointError(
            f"{folder / UNET_DIR}: in_channels {unet.config.in_channels}, manifest says "
            f"{manifest['in_channels']}"
        )
    bar.update()
    vae_config = json.loads((folder / VAE_DIR / "config.json").read_text())
    vae_dtype = torch.float32 if vae_config.get("force_upcast", True) else dtype
    vae = AutoencoderKL.from_pretrained(
        folder / VAE_DIR, torch_dtype=vae_dtype, low_cpu_mem_usage=LOW_CPU_MEM
    )
    bar.update()
    scheduler_path = folder / SCHEDULER_DIR / SCHEDULER_CONFIG
    if not scheduler_path.is_file():
        raise CheckpointError(f"missing file: {scheduler_path}")
    scheduler = make_scheduler("euler", json.loads(scheduler_path.read_text()))
    resampler = load_resampler(folder).to(device, dtype)
    bar.update()
    vit = load_vit(folder).to(device, dtype) if with_vit else None
    bar.update(with_vit)
    negative = load_negative(folder)
    bar.update()
    bar.close()
    negative = NegativeFeatures(
        pooled=negative.pooled.to(device, dtype), tokens=negative.tokens.to(device, dtype)
    )
    return DetokenizerPipeline(
        unet=unet.to(device),
        vae=vae.to(device),
        scheduler=scheduler,
        resampler=resampler,
        vit=vit,
        negative=negative,
    )
