"""Released de-tokenizer checkpoint + SDXL base + Qwen ViT -> the serving de-tokenizer folder.

``convert_detokenizer(SRC, OUT, stage, ...)`` writes ``OUT/detokenizer/<stage>/`` (layout in
``engine.checkpoint.detokenizer_folder``):

* first stage: SDXL-base's UNet with every ``to_k``/``to_v`` weight replaced from the checkpoint.
  Each replaced key must exist in the base with the same shape, and every ``unet.*`` key of the
  checkpoint must be a ``to_k``/``to_v`` weight (§6.5);
* second stage: the UNet config of the base with ``in_channels = 8`` and *all* weights from the
  checkpoint, which must hold exactly the keys of that UNet (§2.7);
* the VAE and scheduler of the base, re-saved; the resampler; the ViT; and the ViT(zeros)
  negative features computed in fp32 with the converted ViT weights.

Streaming: the checkpoint and ViT pickles are memory-mapped, the base read through safetensors
handles, and the UNet written shard by shard (``max_shard_bytes``), so peak RAM stays near one
output shard plus the ViT. Deterministic: sorted keys, fixed safetensors metadata and
``sort_keys`` JSON, so converting twice gives identical bytes. Any missing file, unknown key or
wrong shape raises ``CheckpointError`` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from tqdm import tqdm

from engine.arch import SeedXArch
from engine.checkpoint import detokenizer_folder as folder_layout
from engine.checkpoint import layout
from engine.checkpoint.detokenizer_folder import load_detokenizer, load_vit, read_manifest
from engine.checkpoint.diffusers_weights import TensorSource, load_pickle, write_weights
from engine.checkpoint.errors import CheckpointError
from engine.checkpoint.safetensors_io import save_shard
from engine.checkpoint.sdxl import is_kv_weight
from engine.detokenizer import ResamplerXLV2
from engine.pipeline_inputs import EDIT_DEFAULT_SEED, compute_negative_features
from engine.pipelines import STAGE_CHANNELS
from engine.schedulers import DEFAULT_SCHEDULER, make_scheduler
from engine.vit import QwenViT

__all__ = ["convert_detokenizer", "load_detokenizer", "read_manifest"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
Shapes = dict[str, tuple[int, ...]]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    return dict(json.loads(path.read_text()))


def _meta_shapes(build: Callable[[], torch.nn.Module]) -> Shapes:
    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _check_exact(source: Path, got: Shapes, expected: Shapes, prefix: str = "") -> None:
    """Same key set and shapes, else ``CheckpointError`` naming the first offending key."""
    for key in sorted(set(got) | set(expected)):
        if key not in got:
            raise CheckpointError(f"{source}: missing key {prefix + key!r}")
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected key {prefix + key!r}")
        if got[key] != expected[key]:
            raise CheckpointError(
                f"{source}: key {prefix + key!r} has shape {got[key]}, expected {expected[key]}"
            )


def _split_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``resampler.*`` and ``unet.*`` parts of a released checkpoint, prefixes stripped."""
    parts: dict[str, dict[str, torch.Tensor]] = {"resampler.": {}, "unet.": {}}
    for key, tensor in load_pickle(path).items():
        prefix = next((p for p in parts if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(
                f"{path}: unexpected key {key!r} (neither resampler.* nor unet.*)"
            )
        parts[prefix][key[len(prefix) :]] = tensor
    return parts["resampler."], parts["unet."]


Getter = Callable[[str], torch.Tensor]


def _first_stage_unet(
    ckpt: Path, unet_state: dict[str, torch.Tensor], base: Path, config: dict[str, Any]
) -> tuple[Shapes, Getter]:
    """SDXL base weights with the checkpoint's ``to_k``/``to_v`` in place (§6.5)."""
    base_tensors = TensorSource.open(base / "unet")
    _check_exact(base / "unet", base_tensors.shapes, _unet_shapes(config))
    for key, tensor in sorted(unet_state.items()):
        if not is_kv_weight(key):
            raise CheckpointError(f"{ckpt}: unexpected key 'unet.{key}' (not a to_k/to_v)")
        if key not in base_tensors.shapes:
            raise CheckpointError(f"{ckpt}: key 'unet.{key}' is not in the SDXL base UNet")
        if tuple(tensor.shape) != base_tensors.shapes[key]:
            raise CheckpointError(
                f"{ckpt}: key 'unet.{key}' has shape {tuple(tensor.shape)}, "
                f"expected {base_tensors.shapes[key]}"
            )

    def get(key: str) -> torch.Tensor:
        return unet_state[key] if key in unet_state else base_tensors.get(key)

    return base_tensors.shapes, get


def _unet_shapes(config: dict[str, Any]) -> Shapes:
    return _meta_shapes(lambda: UNet2DConditionModel.from_config(config))


def _convert_unet(
    stage: str,
    ckpt: Path,
    unet_state: dict[str, torch.Tensor],
    base: Path,
    out: Path,
    dtype: torch.dtype,
    max_shard_bytes: int,
) -> None:
    config = _read_json(base / "unet" / "config.json")
    if stage == "first_stage":
        shapes, get = _first_stage_unet(ckpt, unet_state, base, config)
    else:  # the whole 8-channel UNet comes from the checkpoint (§2.7)
        config["in_channels"] = STAGE_CHANNELS[stage]
        shapes = _unet_shapes(config)
        _check_exact(ckpt, {k: tuple(v.shape) for k, v in unet_state.items()}, shapes, "unet.")
        get = unet_state.__getitem__
    (out / folder_layout.UNET_DIR).mkdir(parents=True)
    _write_json(out / folder_layout.UNET_DIR / "config.json", config)
    write_weights(out / folder_layout.UNET_DIR, shapes, get, dtype, max_shard_bytes)


def _copy_vae_and_scheduler(base: Path, out: Path) -> None:
    vae_out = out / folder_layout.VAE_DIR
    vae_out.mkdir(parents=True)
    _write_json(vae_out / "config.json", _read_json(base / "vae" / "config.json"))
    vae = TensorSource.open(base / "vae")
    # fp32 whatever the serving dtype: SDXL's VAE runs in fp32 anyway (force_upcast, §2.8).
    write_weights(vae_out, vae.shapes, vae.get, torch.float32, DEFAULT_MAX_SHARD_BYTES)
    scheduler = _read_json(base / "scheduler" / folder_layout.SCHEDULER_CONFIG)
    make_scheduler(DEFAULT_SCHEDULER, scheduler)  # fails early on an unusable config
    (out / folder_layout.SCHEDULER_DIR).mkdir(parents=True)
    _write_json(out / folder_layout.SCHEDULER_DIR / folder_layout.SCHEDULER_CONFIG, scheduler)


def _write_module(
    out: Path, config: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype
) -> None:
    out.mkdir(parents=True)
    _write_json(out / folder_layout.MODULE_CONFIG, config)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_shard(cast, out / folder_layout.MODULE_WEIGHTS)


def _write_negative(out: Path) -> dict[str, list[int]]:
    vit = load_vit(out).float()  # the converted (dtype-rounded) weights, run in fp32
    negative = compute_negative_features(vit)
    tensors = {
        folder_layout.NEGATIVE_POOLED: negative.pooled,
        folder_layout.NEGATIVE_TOKENS: negative.tokens,
    }
    save_shard(tensors, out / folder_layout.NEGATIVE_FILE)
    return {k: list(v.shape) for k, v in sorted(tensors.items())}


def _manifest(
    stage: str, arch: SeedXArch, dtype: torch.dtype, negative: dict[str, list[int]]
) -> dict[str, Any]:
    second = stage == "second_stage"
    defaults: dict[str, Any] = {
        "guidance_scale": 7.5,
        "num_inference_steps": 50,
        "height": arch.default_image_size,
        "width": arch.default_image_size,
        "scheduler": DEFAULT_SCHEDULER,
        "seed": EDIT_DEFAULT_SEED if second else None,
    }
    if second:
        defaults["image_guidance_scale"] = 1.5
    return {
        "format_version": folder_layout.FORMAT_VERSION,
        "stage": stage,
        "in_channels": STAGE_CHANNELS[stage],
        "dtype": str(dtype).removeprefix("torch."),
        "tasks": ["edit", "reconstruct"] if second else ["generate", "reconstruct"],
        "defaults": defaults,
        "negative_shapes": negative,
        "source": layout.RELEASED_DETOKENIZER_FILE.format(stage=stage),
    }


def convert_detokenizer(
    src_root: Path,
    out_root: Path,
    stage: str,
    arch: SeedXArch,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Writes ``out_root/detokenizer/<stage>/`` from a released tree; returns that folder.

    The folder is built under a ``.partial`` name and renamed at the end, so a failed or
    interrupted conversion never leaves a half-written folder where loaders look.
    """
    if stage not in STAGE_CHANNELS:
        raise ValueError(f"`stage` must be one of {sorted(STAGE_CHANNELS)}, got {stage!r}")
    ckpt = layout.released_detokenizer_file(src_root, stage)
    base = src_root / layout.SDXL_DIR
    vit_file = src_root / layout.VIT_FILE
    for path in (ckpt, vit_file):
        if not path.is_file():
            raise CheckpointError(f"missing file: {path}")
    final = layout.serving_detokenizer_dir(out_root, stage)
    out = final.with_name(final.name + ".partial")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    bar = tqdm(total=5, desc=f"convert {stage}", unit="part", disable=not progress)

    resampler_state, unet_state = _split_checkpoint(ckpt)
    _check_exact(
        ckpt,
        {k: tuple(v.shape) for k, v in resampler_state.items()},
        _meta_shapes(lambda: ResamplerXLV2(arch.detokenizer)),
        prefix="resampler.",
    )
    _write_module(
        out / folder_layout.RESAMPLER_DIR,
        dataclasses.asdict(arch.detokenizer),
        resampler_state,
        dtype,
    )
    bar.update()
    _convert_unet(stage, ckpt, unet_state, base, out, dtype, max_shard_bytes)
    del unet_state
    bar.update()
    _copy_vae_and_scheduler(base, out)
    bar.update()
    vit_state = load_pickle(vit_file)
    _check_exact(
        vit_file,
        {k: tuple(v.shape) for k, v in vit_state.items()},
        _meta_shapes(lambda: QwenViT(arch.vit)),
    )
    _write_module(out / folder_layout.VIT_DIR, dataclasses.asdict(arch.vit), vit_state, dtype)
    del vit_state
    bar.update()
    negative = _write_negative(out)
    _write_json(out / layout.DETOKENIZER_MANIFEST, _manifest(stage, arch, dtype, negative))
    bar.update()
    bar.close()
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    logger.info("wrote %s", final)
    return final
