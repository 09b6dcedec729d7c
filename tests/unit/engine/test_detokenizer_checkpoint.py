"""Tiny released de-tokenizer checkpoints -> convert_detokenizer -> load_detokenizer (§6.5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from engine.arch import SeedXArch
from engine.checkpoint import layout
from engine.checkpoint.convert_detokenizer import (
    convert_detokenizer,
    load_detokenizer,
    read_manifest,
)
from engine.checkpoint.errors import CheckpointError
from engine.checkpoint.sdxl import is_kv_weight, tiny_unet_config
from tests.unit.engine.detok_fixtures import spec_shapes, write_detok_tree


def released(tree: Path, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(layout.released_detokenizer_file(tree, stage), weights_only=True)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_released_key_sets(detok_tree: Path, detok_arch: SeedXArch) -> None:
    resampler_keys = {f"resampler.{k}" for k in spec_shapes(detok_arch.detokenizer)}
    first, second = released(detok_tree, "first_stage"), released(detok_tree, "second_stage")
    unet_first = {k for k in first if k.startswith("unet.")}
    assert set(first) - unet_first == resampler_keys
    assert unet_first
    assert all(is_kv_weight(k) for k in unet_first)
    # Every attention of every transformer block: attn1 and attn2, to_k and to_v.
    blocks = {k.rsplit(".attn", 1)[0] for k in unet_first}
    assert len(unet_first) == 4 * len(blocks)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(tiny_unet_config(detok_arch))
    transformer_blocks = {
        f"unet.{name}"
        for name, _ in unet.named_modules()
        if name.split(".")[-2:-1] == ["transformer_blocks"]
    }
    assert blocks == transformer_blocks
    assert any(b.endswith(".transformer_blocks.1") for b in blocks)
    assert {k for k in second if k.startswith("resampler.")} == resampler_keys
    assert second["unet.conv_in.weight"].shape == (16, 8, 3, 3)


def test_round_trip_first_stage(detok_tree: Path, detok_serving: Path) -> None:
    folder = layout.serving_detokenizer_dir(detok_serving, "first_stage")
    manifest = read_manifest(folder)
    assert manifest["stage"] == "first_stage"
    assert manifest["in_channels"] == 4
    assert manifest["defaults"]["num_inference_steps"] == 50
    assert manifest["defaults"]["seed"] is None
    pipe = load_detokenizer(folder)
    ckpt = released(detok_tree, "first_stage")
    base = load_file(
        str(detok_tree / layout.SDXL_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    )
    unet = pipe.unet.state_dict()
    for key, value in unet.items():
        expected = ckpt.get(f"unet.{key}", base[key])
        assert torch.equal(value, expected), key
    key = next(k for k in base if is_kv_weight(k))
    assert not torch.equal(base[key], unet[key])  # the k/v were really replaced
    for key, value in pipe.resampler.state_dict().items():
        assert torch.equal(value, ckpt[f"resampler.{key}"]), key
    image = pipe.generate(
        torch.randn(1, 64, 128), seed=0, height=64, width=64, num_inference_steps=2
    )
    assert image.size == (64, 64)


def test_round_trip_second_stage(detok_tree: Path, detok_serving: Path) -> None:
    folder = layout.serving_detokenizer_dir(detok_serving, "second_stage")
    manifest = read_manifest(folder)
    assert (manifest["in_channels"], manifest["defaults"]["seed"]) == (8, 42)
    pipe = load_detokenizer(folder, with_vit=False)
    assert pipe.vit is None
    ckpt = released(detok_tree, "second_stage")
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, ckpt[f"unet.{key}"]), key
    assert pipe.unet.config.in_channels == 8


def test_converting_twice_gives_identical_bytes(
    detok_tree: Path, detok_arch: SeedXArch, detok_serving: Path, tmp_path: Path
) -> None:
    for stage in layout.DETOKENIZER_STAGES:
        again = convert_detokenizer(detok_tree, tmp_path, stage, detok_arch, torch.float32, False)
        assert folder_bytes(again) == folder_bytes(
            layout.serving_detokenizer_dir(detok_serving, stage)
        )


def test_half_precision_and_sharded_unet(
    detok_tree: Path, detok_arch: SeedXArch, tmp_path: Path
) -> None:
    folder = convert_detokenizer(
        detok_tree,
        tmp_path,
        "first_stage",
        detok_arch,
        torch.bfloat16,
        False,
        max_shard_bytes=200_000,
    )
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((folder / "unet").glob("diffusion_pytorch_model-*.safetensors"))) > 1
    assert read_manifest(folder)["dtype"] == "bfloat16"
    assert (
        load_file(str(folder / "resampler" / "model.safetensors"))["latents"].dtype
        == torch.bfloat16
    )
    assert load_file(str(folder / "negative.safetensors"))["pooled"].dtype == torch.float32
    pipe = load_detokenizer(folder, dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32  # force_upcast
    pipe.generate(torch.randn(1, 64, 128), seed=0, height=64, width=64, num_inference_steps=1)


def edited_tree(src: Path, dst: Path, stage: str, edit: object) -> Path:
    shutil.copytree(src, dst)
    path = layout.released_detokenizer_file(dst, stage)
    state = torch.load(path, weights_only=True)
    edit(state)  # type: ignore[operator]
    torch.save(state, path)
    return dst


def rename(old: str, new: str) -> object:
    return lambda state: state.__setitem__(new, state.pop(old))


KV = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize(
    ("stage", "edit", "message"),
    [
        (
            "first_stage",
            rename("resampler.proj_in.weight", "resampler.proj_in.w"),
            "resampler.proj_in.w",
        ),
        (
            "first_stage",
            lambda s: s.pop("resampler.layers.1.0.to_kv.weight"),
            "resampler.layers.1.0.to_kv.weight",
        ),
        ("first_stage", rename(KV, KV.replace("to_k", "to_kk")), KV.replace("to_k", "to_kk")),
        ("first_stage", rename(KV, KV.replace("attentions.0", "attentions.7")), "attentions.7"),
        ("first_stage", lambda s: s.__setitem__(KV, torch.zeros(3, 3)), "expected"),
        (
            "first_stage",
            lambda s: s.__setitem__("vae.encoder.conv_in.weight", torch.zeros(1)),
            "vae.encoder",
        ),
        ("second_stage", lambda s: s.pop("unet.conv_in.bias"), "unet.conv_in.bias"),
        (
            "second_stage",
            lambda s: s.__setitem__("unet.conv_in.weight", torch.zeros(16, 4, 3, 3)),
            "(16, 8, 3, 3)",
        ),
    ],
)
def test_bad_checkpoint_names_file_and_key(
    detok_tree: Path, detok_arch: SeedXArch, tmp_path: Path, stage: str, edit: object, message: str
) -> None:
    tree = edited_tree(detok_tree, tmp_path / "tree", stage, edit)
    with pytest.raises(CheckpointError) as info:
        convert_detokenizer(tree, tmp_path / "out", stage, detok_arch, torch.float32, False)
    assert message in str(info.value)
    assert "pytorch_model.bin" in str(info.value)
    assert not layout.serving_detokenizer_dir(tmp_path / "out", stage).exists()


def test_missing_files_are_named(detok_arch: SeedXArch, tmp_path: Path) -> None:
    tree = write_detok_tree(tmp_path / "tree", detok_arch)
    (tree / layout.VIT_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"qwen_vit_G\.pt"):
        convert_detokenizer(tree, tmp_path / "out", "first_stage", detok_arch, torch.float32, False)
    with pytest.raises(CheckpointError, match=r"seedx_detokenizer\.json"):
        load_detokenizer(tmp_path)


def test_tiny_unet_matches_sdxl_structure(detok_arch: SeedXArch) -> None:
    config = tiny_unet_config(detok_arch)
    assert config["cross_attention_dim"] == detok_arch.detokenizer.cross_attention_dim
    assert (
        config["projection_class_embeddings_input_dim"]
        == detok_arch.detokenizer.output2_dim + 6 * 8
    )
    assert config["addition_embed_type"] == "text_time"
