"""What each stage needs: the released sizes (checked against the model classes on the meta
device and against docs/deploy.md), a serving tree's sizes from its safetensors headers, and the
diffusion activation estimate."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from engine.arch import SeedXArch, tiny_arch
from seedx.placement.sizes import (
    RELEASED_LLAMA,
    SDXL_UNET_PARAMS,
    SDXL_VAE_PARAMS,
    UNET_ROW_BYTES_PER_LATENT_PIXEL,
    VAE_DECODE_BYTES_PER_LATENT_PIXEL,
    LlamaShape,
    agent_params,
    detokenizer_resampler_params,
    diffusion_activation_bytes,
    read_safetensors_header,
    read_serving_tree,
    released_sizes,
    resampler_params,
    vit_params,
)

ROOT = Path(__file__).resolve().parents[3]
GB = 10**9


def _sizing_section() -> str:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    start = doc.index("## Sizing: GPU memory per stage for SEED-X-17B")
    return doc[start : doc.index("\n## ", start + 1)]


def test_released_llm_matches_the_sizing_section_of_the_docs() -> None:
    llm = released_sizes().llms["seed-x-i"]
    assert llm.params == 15_170_037_504
    assert llm.linear_params + llm.vocab_params + 80 * 5120 + 5120 == 13_019_243_520  # LLaMA
    weights = llm.weight_bytes_per_gpu(2)
    kv = llm.kv_bytes_per_token(2)
    assert kv == 2 * 40 * 40 * 128 * 2 == 819_200
    section = _sizing_section()
    assert f"| **weights** | {llm.params / 1e9:.2f} B | **{weights / GB:.2f} GB**" in section
    assert f"**{kv:,} bytes" in section
    assert f"a full 2048-token context is {2048 * kv / GB:.2f} GB" in section


def test_released_detokenizers_match_the_docs() -> None:
    section = _sizing_section()
    for detok in released_sizes().detokenizers.values():
        with_vit, without = detok.weight_bytes(2), detok.weight_bytes(2, load_vit=False)
        assert f"**≈ {with_vit / GB:.1f} GB** with the ViT" in section
        assert f"**≈ {without / GB:.1f} GB** without" in section
    assert released_sizes().detokenizers["first_stage"].guidance_rows == 2
    assert released_sizes().detokenizers["second_stage"].guidance_rows == 3


def test_released_llama_is_real_dims() -> None:
    from engine.checkpoint.real_dims import REAL_LLM

    shape = {k: getattr(RELEASED_LLAMA, k) for k in REAL_LLM}
    assert shape == REAL_LLM
    assert RELEASED_LLAMA.vocab_size == 32000 + 330
    assert RELEASED_LLAMA.head_size == 128


@pytest.mark.parametrize("arch", [SeedXArch(), tiny_arch()], ids=["released", "tiny"])
def test_counts_equal_the_model_classes(arch: SeedXArch) -> None:
    torch = pytest.importorskip("torch")
    from engine.agent import SeedXAgent
    from engine.detokenizer import ResamplerXLV2
    from engine.resampler import Resampler
    from engine.vit import QwenViT

    def count(module: object) -> int:
        return sum(t.numel() for t in module.state_dict().values())  # type: ignore[attr-defined]

    hidden = arch.input_resampler.embed_dim
    with torch.device("meta"):
        assert count(QwenViT(arch.vit)) == vit_params(arch.vit)
        assert count(SeedXAgent(arch, hidden)) == agent_params(arch, hidden)
        assert count(Resampler(arch.output_resampler)) == resampler_params(arch.output_resampler)
        assert count(ResamplerXLV2(arch.detokenizer)) == detokenizer_resampler_params(
            arch.detokenizer
        )


def test_llama_counts_equal_transformers() -> None:
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32330,
    }
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    state = model.state_dict()
    linear = sum(t.numel() for k, t in state.items() if k.endswith("_proj.weight"))
    shape = LlamaShape.from_config(config)
    assert linear == shape.linear_params()
    assert sum(t.numel() for t in state.values()) == (
        shape.linear_params() + shape.vocab_params() + shape.norm_params()
    )


def test_sdxl_counts_equal_diffusers() -> None:
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from engine.checkpoint.sdxl import sdxl_unet_config, sdxl_vae_config

    sizes = released_sizes().detokenizers
    with torch.device("meta"):
        for stage, channels in (("first_stage", 4), ("second_stage", 8)):
            unet = UNet2DConditionModel(**sdxl_unet_config(channels))
            assert sum(p.numel() for p in unet.parameters()) == sizes[stage].unet_params
        vae = AutoencoderKL(**sdxl_vae_config())
    assert sizes["first_stage"].unet_params == SDXL_UNET_PARAMS
    assert sum(p.numel() for p in vae.parameters()) == SDXL_VAE_PARAMS


def test_tensor_parallel_sizes_and_fp8_bytes() -> None:
    llm = released_sizes().llms["seed-x-i"]
    assert llm.tp_sizes() == [1, 2, 4, 8]
    b = 2
    assert llm.weight_bytes_per_gpu(b, tp=2) == (
        (llm.linear_params + llm.vocab_params) * b // 2 + llm.replicated_params * b
    )
    assert llm.weight_bytes_per_gpu(b, tp=1, fp8=True) == (
        llm.linear_params + (llm.vocab_params + llm.replicated_params) * b
    )
    assert llm.weight_bytes_per_gpu(b, fp8=True) / GB == pytest.approx(17.65, abs=0.01)


# -- a serving tree -------------------------------------------------------------------------


def _data_bytes(path: Path) -> int:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
    return path.stat().st_size - 8 - length


def test_serving_tree_sizes_come_from_the_headers(serving_tree: Path) -> None:
    sizes = read_serving_tree(serving_tree)
    manifest = json.loads((serving_tree / "seedx_serving.json").read_text())
    assert manifest["dtype"] == "float32"
    assert sizes.dtype == "float16"  # a GPU serves a float32 tree in float16
    assert sorted(sizes.llms) == sorted(manifest["models"])
    assert sorted(sizes.detokenizers) == ["first_stage", "second_stage"]
    arch = tiny_arch()
    for name, llm in sizes.llms.items():
        folder = serving_tree / manifest["models"][name]["path"]
        config = json.loads((folder / "config.json").read_text())
        shape = LlamaShape.from_config(config)
        assert llm.linear_params == shape.linear_params()
        assert llm.vocab_params == shape.vocab_params()
        replicated = (
            shape.norm_params() + vit_params(arch.vit) + agent_params(arch, shape.hidden_size)
        )
        assert llm.replicated_params == replicated
        assert llm.stored_bytes == llm.params * 4
        assert llm.stored_bytes == sum(_data_bytes(p) for p in folder.glob("*.safetensors"))
        assert llm.kv_bytes_per_token(2) == 2 * shape.num_hidden_layers * (
            shape.num_key_value_heads * shape.head_size * 2
        )


def test_serving_tree_detokenizers(serving_tree: Path) -> None:
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    arch = tiny_arch()
    for stage, detok in read_serving_tree(serving_tree).detokenizers.items():
        folder = serving_tree / "detokenizer" / stage
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(
                json.loads((folder / "unet" / "config.json").read_text())
            )
            vae = AutoencoderKL.from_config(
                json.loads((folder / "vae" / "config.json").read_text())
            )
        assert detok.unet_params == sum(p.numel() for p in unet.parameters())
        assert detok.vae_params == sum(p.numel() for p in vae.parameters())
        assert detok.resampler_params == detokenizer_resampler_params(arch.detokenizer)
        assert detok.vit_params == vit_params(arch.vit)
        assert detok.vae_fp32
        assert detok.fixed_bytes == _data_bytes(folder / "negative.safetensors")
        assert detok.guidance_rows == (3 if stage == "second_stage" else 2)


def test_not_a_serving_tree(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("no seedx_serving.json")):
        read_serving_tree(tmp_path)


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"abc", "shorter than 8 bytes"), (struct.pack("<Q", 2**40) + b"{}", "header of")],
)
def test_bad_safetensors_files(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(words)):
        read_safetensors_header(path)


# -- diffusion activations ------------------------------------------------------------------


def test_activations_at_1024() -> None:
    latent = 128 * 128
    one = diffusion_activation_bytes(2, 1024, 1024, 1, 1, 2048)
    assert one == latent * (2 * UNET_ROW_BYTES_PER_LATENT_PIXEL + VAE_DECODE_BYTES_PER_LATENT_PIXEL)
    assert UNET_ROW_BYTES_PER_LATENT_PIXEL * latent / GB == pytest.approx(0.246, abs=0.001)
    assert VAE_DECODE_BYTES_PER_LATENT_PIXEL * latent / GB == pytest.approx(3.54, abs=0.01)
    four = diffusion_activation_bytes(2, 1024, 1024, 4, 4, 2048)
    assert four == 4 * one
    # decode_batch bounds the decode; the UNet batch still holds max_batch images
    assert diffusion_activation_bytes(2, 1024, 1024, 4, 1, 2048) == latent * (
        8 * UNET_ROW_BYTES_PER_LATENT_PIXEL + VAE_DECODE_BYTES_PER_LATENT_PIXEL
    )


def test_activations_follow_the_pixels_and_tiling() -> None:
    small = diffusion_activation_bytes(3, 512, 512, 2, 2, 2048)
    assert diffusion_activation_bytes(3, 1024, 1024, 2, 2, 2048) == 4 * small
    tiled = diffusion_activation_bytes(2, 2048, 2048, 1, 1, 2048)
    untiled = diffusion_activation_bytes(2, 2048, 2048, 1, 1, 0)
    decode_1024 = 128 * 128 * VAE_DECODE_BYTES_PER_LATENT_PIXEL
    assert untiled - tiled == 4 * decode_1024 - decode_1024
