"""make-tiny writes the released layout (§6); convert is strict, streaming and deterministic."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.arch import ARCH_FILE_NAME, SeedXArch, tiny_arch
from engine.checkpoint import layout
from engine.checkpoint.convert import convert, convert_llm
from engine.checkpoint.errors import CheckpointError
from engine.checkpoint.tiny import make_tiny
from engine.loading import LlmFolder, load_llm, load_picture_encoder, resolve_llm_folder


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tiny_tree_has_the_released_layout(tiny_tree: Path) -> None:
    expected = [f"{layout.TOKENIZER_DIR}/{name}" for name in layout.TOKENIZER_FILES] + [
        layout.VIT_FILE,
        ARCH_FILE_NAME,
    ]
    for folder in layout.MODEL_FOLDERS.values():
        expected += [
            f"{folder}/agent/pytorch_model.bin",
            f"{folder}/llm/config.json",
            f"{folder}/llm/pytorch_model.bin.index.json",
            f"{folder}/llm/pytorch_model-00001-of-00002.bin",
        ]
    for stage in layout.DETOKENIZER_STAGES:
        expected.append(f"seed_detokenizer/{stage}/pytorch_model.bin")
    for sub in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        expected.append(f"{layout.SDXL_DIR}/{sub}")
    missing = [p for p in expected if not (tiny_tree / p).is_file()]
    assert not missing
    size = sum(p.stat().st_size for p in tiny_tree.rglob("*") if p.is_file())
    assert size < 50 * 2**20


def test_tiny_keys_match_the_spec(tiny_tree: Path) -> None:
    vit = torch.load(tiny_tree / layout.VIT_FILE, weights_only=True)
    assert vit["conv1.weight"].shape[1:] == (3, 14, 14)
    assert "transformer.resblocks.0.attn.in_proj.weight" in vit
    assert {
        "attn_pool.query",
        "attn_pool.pos_embed",
        "attn_pool.kv_proj.weight",
        "proj",
        "ln_post.weight",
        "positional_embedding",
    } <= set(vit)
    # Qwen-VL's weights are bf16 values whatever the file dtype (§6.3)
    w = vit["transformer.resblocks.0.mlp.c_fc.weight"]
    assert torch.equal(w, w.to(torch.bfloat16).float())
    agent = torch.load(tiny_tree / "seed_x_i" / layout.AGENT_FILE, weights_only=True)
    assert {k.split(".")[0] for k in agent} == {
        "input_resampler",
        "output_resampler",
        "patch_pos_embed",
    }
    assert agent["patch_pos_embed"].shape == (4, 128)
    assert agent["input_resampler.attn.in_proj_weight"].shape == (3 * 128, 128)
    index = json.loads((tiny_tree / "seed_x_i/llm/pytorch_model.bin.index.json").read_text())
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" in index["weight_map"]
    config = json.loads((tiny_tree / "seed_x_i/llm/config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64


def test_make_tiny_is_deterministic(tiny_tree: Path, tmp_path: Path) -> None:
    again = make_tiny(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(tiny_tree)


def test_arch_file_round_trips_and_rejects_unknown_keys(tmp_path: Path) -> None:
    arch = tiny_arch()
    arch.save(tmp_path)
    assert SeedXArch.load(tmp_path) == arch
    assert SeedXArch.load(tmp_path / "nowhere") == SeedXArch()  # 17B defaults without a file
    with pytest.raises(ValueError, match="unknown keys in 'vit'"):
        SeedXArch.from_dict({"vit": {"widht": 3}})


def test_convert_writes_the_serving_layout(serving_tree: Path) -> None:
    manifest = json.loads((serving_tree / layout.SERVING_MANIFEST).read_text())
    assert sorted(manifest["models"]) == ["seed-x", "seed-x-edit", "seed-x-i"]
    assert sorted(manifest["detokenizers"]) == ["first_stage", "second_stage"]
    folder = LlmFolder.read(serving_tree / "seed-x-i")
    assert folder.config["architectures"] == ["SeedXForCausalLM"]
    assert folder.detokenizer == "first_stage"
    assert LlmFolder.read(serving_tree / "seed-x-edit").detokenizer == "second_stage"
    index = json.loads((serving_tree / "seed-x-i/model.safetensors.index.json").read_text())
    prefixes = {name.split(".")[0] for name in index["weight_map"]}
    assert prefixes == {"model", "lm_head", "vit", "agent"}
    assert not any("inv_freq" in name for name in index["weight_map"])
    for name in layout.TOKENIZER_FILES:
        assert (serving_tree / "seed-x-i" / name).is_file()
    gen_config = json.loads((serving_tree / "seed-x-i/generation_config.json").read_text())
    assert "temperature" not in gen_config  # SEED-X decodes greedily (§5.5)


def test_serving_folder_loads_the_released_weights(tiny_tree: Path, serving_tree: Path) -> None:
    folder = LlmFolder.read(resolve_llm_folder(serving_tree, "seed-x-i"))
    llm = load_llm(folder, torch.float32)
    shard = torch.load(
        tiny_tree / "seed_x_i/llm/pytorch_model-00001-of-00002.bin", weights_only=True
    )
    state = llm.state_dict()
    for key, tensor in shard.items():
        if not key.endswith("inv_freq"):
            assert torch.equal(state[key], tensor), key
    encoder = load_picture_encoder(folder, torch.float32)
    vit = torch.load(tiny_tree / layout.VIT_FILE, weights_only=True)
    assert torch.equal(encoder.vit.state_dict()["proj"], vit["proj"])


def test_convert_is_byte_identical_twice(tiny_tree: Path, tmp_path: Path) -> None:
    arch = SeedXArch.load(tiny_tree)
    a = convert_llm(tiny_tree, tmp_path / "a", "seed-x", arch, "float16", progress=False)
    b = convert_llm(tiny_tree, tmp_path / "b", "seed-x", arch, "float16", progress=False)
    assert _digest(a) == _digest(b)


def test_config_at_model_root_is_accepted(tiny_tree: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_tree, src)
    (src / "seed_x/llm/config.json").rename(src / "seed_x/config.json")
    out = convert_llm(src, tmp_path / "out", "seed-x", SeedXArch.load(src), "float32", False)
    assert (out / "config.json").is_file()


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ("missing_file", "missing file"),
        ("wrong_shape", "has shape"),
        ("unknown_key", "unexpected key 'agent.bogus'"),
        ("missing_key", "missing keys"),
    ],
)
def test_convert_names_the_file_and_key(
    tiny_tree: Path, tmp_path: Path, mutation: str, message: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_tree, src)
    agent_file = src / "seed_x" / layout.AGENT_FILE
    agent = torch.load(agent_file, weights_only=True)
    if mutation == "missing_file":
        agent_file.unlink()
    elif mutation == "wrong_shape":
        agent["patch_pos_embed"] = torch.zeros(5, 128)
    elif mutation == "unknown_key":
        agent["bogus"] = torch.zeros(1)
    else:
        del agent["output_resampler.query"]
    if agent_file.exists():
        torch.save(agent, agent_file)
    with pytest.raises(CheckpointError, match=message) as info:
        convert(src, tmp_path / "out", models=["seed-x"], progress=False)
    assert "seed_x" in str(info.value)


def test_convert_rejects_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="source tree not found"):
        convert(tmp_path / "nope", tmp_path / "out", progress=False)
