"""``seedx make-tiny DIR``: a complete random-weight SEED-X tree in the released layout (§6).

Every file has the name, format and key set of the real SEED-X-17B release (pickled
``pytorch_model*.bin`` shards with an index for the LLMs, a ``torch.save``d state dict for the
ViT and agents, diffusers folders for the SDXL base), only smaller, so that ``seedx convert`` and
every loader are exercised exactly as on the real files. The sizes go into ``seedx_arch.json``
and the LLM sizes into each ``llm/config.json``. Deterministic from ``seed``; a few MB.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from engine.agent import SeedXAgent
from engine.arch import SeedXArch, tiny_arch
from engine.checkpoint import layout
from engine.checkpoint.random_init import randomize_
from engine.vit import QwenViT

logger = logging.getLogger(__name__)

TINY_LLM = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head dim 64: a size the vLLM CPU attention kernels accept
    "num_key_value_heads": 2,
}
LLM_SHARDS = 2  # the release has 6; two are enough to exercise the index


def llama_config(vocab_size: int, **sizes: int) -> dict[str, Any]:
    """A ``config.json`` as transformers 4.30.2 wrote SEED-X's (§2.4), at the given sizes."""
    return {
        "_name_or_path": "seedx-tiny",
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "pretraining_tp": 2,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.30.2",
        "use_cache": True,
        "vocab_size": vocab_size,
        **sizes,
    }


def _llm_state_dict(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    model = model.to_empty(device="cpu")
    randomize_(model, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # transformers 4.30 also saved the RoPE buffers; loaders must ignore them (§6.2).
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(config["num_hidden_layers"]):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return state


def write_llm_folder(folder: Path, config: dict[str, Any], seed: int) -> None:
    """Pickled shards + ``pytorch_model.bin.index.json`` + configs, as the release's ``llm/``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = _llm_state_dict(config, seed)
    names = sorted(state)
    per_shard = -(-len(names) // LLM_SHARDS)
    weight_map: dict[str, str] = {}
    total = 0
    for index in range(LLM_SHARDS):
        shard_name = f"pytorch_model-{index + 1:05d}-of-{LLM_SHARDS:05d}.bin"
        shard = {n: state[n] for n in names[index * per_shard : (index + 1) * per_shard]}
        torch.save(shard, folder / shard_name)
        weight_map.update(dict.fromkeys(shard, shard_name))
        total += sum(t.numel() * t.element_size() for t in shard.values())
    write_llm_metadata(folder, config, weight_map, total)


def write_llm_metadata(
    folder: Path, config: dict[str, Any], weight_map: dict[str, str], total: int
) -> None:
    """The index, ``config.json`` and ``generation_config.json`` of a released ``llm/``."""
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _write_json(folder / layout.LLM_INDEX_FILE, index_json)
    _write_json(folder / "config.json", config)
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "temperature": 0.9,
            "top_p": 0.6,
            "transformers_version": "4.30.2",
        },
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _tokenizer_vocab_size(tokenizer_dir: Path) -> int:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    added = json.loads((tokenizer_dir / "added_tokens.json").read_text())
    return max(sp.get_piece_size(), max(added.values()) + 1)


def make_tiny(
    root: Path, seed: int = 0, arch: SeedXArch | None = None, *, progress: bool = False
) -> Path:
    """Writes the whole tiny tree under ``root`` and returns it (``progress``: a tqdm bar)."""
    from tqdm import tqdm

    from engine.checkpoint.sdxl import write_tiny_detokenizers, write_tiny_sdxl_base
    from engine.checkpoint.tokenizer_files import write_tokenizer_folder

    arch = arch or tiny_arch(llm_hidden=TINY_LLM["hidden_size"])
    root.mkdir(parents=True, exist_ok=True)
    arch.save(root)
    parts = 4 + len(layout.MODEL_FOLDERS)  # tokenizer, ViT, each LLM, SDXL base, de-tokenizers
    bar = tqdm(total=parts, desc="make-tiny", unit="part", disable=not progress)

    tokenizer_dir = root / layout.TOKENIZER_DIR
    write_tokenizer_folder(tokenizer_dir)
    vocab_size = _tokenizer_vocab_size(tokenizer_dir)
    bar.update()

    vit = randomize_(QwenViT(arch.vit), seed + 1, bf16_exact=True)
    (root / layout.VIT_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(vit.state_dict(), root / layout.VIT_FILE)
    bar.update()

    for offset, (name, folder) in enumerate(sorted(layout.MODEL_FOLDERS.items())):
        model_seed = seed + 100 * (offset + 1)
        config = llama_config(vocab_size, **TINY_LLM)
        write_llm_folder(root / folder / layout.LLM_SUBDIR, config, model_seed)
        agent = randomize_(SeedXAgent(arch, TINY_LLM["hidden_size"]), model_seed + 1)
        agent_file = root / folder / layout.AGENT_FILE
        agent_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(agent.state_dict(), agent_file)
        logger.info("wrote tiny %s", name)
        bar.update()

    write_tiny_sdxl_base(root, arch, seed + 7)
    bar.update()
    write_tiny_detokenizers(root, arch, seed + 11)
    bar.update()
    bar.close()
    return root
