"""``seedx make-tiny --dims real`` (issue 15): the real SEED-X-17B / SDXL dimensions.

The full tree is ~35 GB in fp16, so CI writes it at the real widths with one LLM layer and one
ViT layer and no SDXL (the GPU check writes the whole thing); the SDXL-size modules are checked
against the parameter counts of the model spec on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.arch import SeedXArch
from engine.checkpoint.real_dims import REAL_LLM, RealDims, llm_parameters, make_real
from engine.checkpoint.tiny import llama_config


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_real_sizes_match_the_model_spec() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from engine.agent import SeedXAgent
    from engine.checkpoint.sdxl import sdxl_unet_config, sdxl_vae_config
    from engine.detokenizer import ResamplerXLV2
    from engine.vit import QwenViT

    arch = SeedXArch()
    with torch.device("meta"):
        assert _params(UNet2DConditionModel.from_config(sdxl_unet_config())) == 2_567_463_684
        assert _params(UNet2DConditionModel.from_config(sdxl_unet_config(8))) == 2_567_475_204
        assert round(_params(AutoencoderKL.from_config(sdxl_vae_config())) / 1e6) == 84
        assert round(_params(ResamplerXLV2(arch.detokenizer)) / 1e6, 1) == 61.2  # §1
        assert round(_params(QwenViT(arch.vit)) / 1e9, 2) == 1.94
        assert round(_params(SeedXAgent(arch, 5120)) / 1e6, 1) == 126.5 + 88.6 + 0.1
    assert round(llm_parameters(llama_config(32330, **REAL_LLM)) / 1e9, 2) == 13.02


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dims = RealDims(llm_layers=1, vit_layers=1, detokenizers=False, shard_bytes=256 << 20)
    return make_real(tmp_path_factory.mktemp("real") / "tree", dims)


def test_tree_has_the_released_layout_at_real_width(real_tree: Path) -> None:
    llm = real_tree / "seed_x_i" / "llm"
    config = json.loads((llm / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]) == (
        5120,
        13824,
        40,
    )
    assert config["vocab_size"] == 32330
    assert config["num_hidden_layers"] == 1
    index = json.loads((llm / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2  # streamed: no shard above the requested size but a single tensor
    for shard in shards:
        assert (llm / shard).stat().st_size < (256 << 20) + (400 << 20)
    embed = torch.load(llm / index["weight_map"]["model.embed_tokens.weight"], mmap=True)
    assert embed["model.embed_tokens.weight"].shape == (32330, 5120)
    assert embed["model.embed_tokens.weight"].dtype == torch.float16
    vit = torch.load(real_tree / "QwenViT" / "qwen_vit_G.pt", mmap=True)
    assert vit["attn_pool.attn.in_proj_weight"].shape == (12288, 4096)
    assert vit["transformer.resblocks.0.attn.in_proj.weight"].shape == (4992, 1664)
    tokenizer_ids = json.loads(
        (
            real_tree / "cvlm_llama2_tokenizer_100img_and_224loc_addpatch" / "added_tokens.json"
        ).read_text()
    )
    assert sorted(tokenizer_ids.values()) == list(range(32000, 32330))


def test_convert_and_the_reference_run_it(real_tree: Path, tmp_path: Path) -> None:
    from PIL import Image

    from engine import flows
    from engine.checkpoint.convert import convert
    from engine.prompts import build_prompt, text_to_image_template
    from engine.runner import load_reference

    # fp32 on the CPU (half matmuls are slow there); the GPU check serves it in fp16
    convert(real_tree, tmp_path / "serving", dtype="float32", progress=False)
    reference = load_reference(tmp_path / "serving", "seed-x-i", torch.float32, "cpu")
    image = Image.new("RGB", (640, 480), (200, 30, 90))
    result = flows.chat(reference, [image], "What is this?", max_new_tokens=4)
    assert len(result.generation.output_ids) == 4
    assert result.generation.prompt_ids.count(reference.tokenizer.boi_id) == 1
    ids = list(build_prompt(reference.tokenizer, text_to_image_template("seed-x", "a cat")).ids)
    generation = reference.generate(ids, None, max_new_tokens=70)
    assert generation.images[0].embedding.shape == (64, 4096)  # the visual embedding, real size


def test_cli_refuses_bad_layer_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seedx.cli import main

    assert main(["make-tiny", str(tmp_path / "x"), "--dims", "real", "--llm-layers", "0"]) == 2
    assert "--llm-layers" in capsys.readouterr().out
