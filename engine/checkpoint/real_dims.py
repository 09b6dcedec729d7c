"""``seedx make-tiny DIR --dims real``: random weights at SEED-X-17B / SDXL dimensions.

Speed and memory do not depend on the weights' values, so a random tree at the real sizes
measures them truly (issue 15): LLaMA-2-13B width (5120, 13824, 40 heads, vocabulary 32330) with
``llm_layers`` of its 40 layers, the Qwen-VL ViT-bigG (1664 wide, ``vit_layers`` of 48, the
4096-wide attention pool), the resamplers and the SDXL de-tokenizers at full size, in the
released layout (§6) so that ``seedx convert`` and every loader run exactly as on the real files.

The LLM is never held whole: each tensor is drawn on ``device`` (a GPU draws 13 B values in
seconds), cast to the stored dtype and moved into the current shard, which is written and freed
before the next one starts; peak memory is one shard (``shard_bytes``). The other parts are at most
a few GB each and are built whole on ``device``, one at a time.

The tokenizer is real-sized too: a 32000-piece byte-fallback BPE SentencePiece model (LLaMA's
size and id layout: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) trained in a few seconds on a seeded
synthetic corpus, plus the 330 SEED-X tokens, so every one of the 32330 ids decodes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine.agent import SeedXAgent
from engine.arch import SeedXArch, VitArch
from engine.checkpoint import layout
from engine.checkpoint.random_init import randomize_
from engine.checkpoint.tiny import llama_config, write_llm_metadata
from engine.vit import QwenViT

logger = logging.getLogger(__name__)

REAL_LLM = {
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
}
SP_PIECES = 32000  # LLaMA-2's SentencePiece size; + 330 added tokens = vocab_size 32330
DEFAULT_SHARD_BYTES = 4 << 30
MODEL_NAMES = tuple(layout.MODEL_FOLDERS)


@dataclasses.dataclass(frozen=True)
class RealDims:
    """What ``make_real`` writes. Defaults: the whole SEED-X-I tree in fp16."""

    llm_layers: int = 40
    vit_layers: int = 48
    models: tuple[str, ...] = ("seed-x-i",)
    detokenizers: bool = True
    dtype: torch.dtype = torch.float16
    device: str = "cpu"
    shard_bytes: int = DEFAULT_SHARD_BYTES

    def validate(self) -> None:
        if not 1 <= self.llm_layers <= REAL_LLM["num_hidden_layers"]:
            raise ValueError(f"--llm-layers must be in 1..40, got {self.llm_layers}")
        if not 1 <= self.vit_layers <= VitArch().layers:
            raise ValueError(f"--vit-layers must be in 1..48, got {self.vit_layers}")
        unknown = set(self.models) - set(MODEL_NAMES)
        if unknown or not self.models:
            raise ValueError(f"--models must be among {list(MODEL_NAMES)}, got {list(self.models)}")
        if "seed-x-edit" in self.models and not self.detokenizers:
            raise ValueError(
                "seed-x-edit needs the second-stage de-tokenizer (drop --no-detokenizers)"
            )

    @property
    def arch(self) -> SeedXArch:
        return SeedXArch(vit=dataclasses.replace(VitArch(), layers=self.vit_layers))


# -- tokenizer ------------------------------------------------------------------------------


def _corpus(seed: int, sentences: int = 200_000) -> Iterator[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(60_000)]
    for _ in range(sentences):
        yield " ".join(rng.choice(words) for _ in range(12))


def write_real_tokenizer(dest: Path, seed: int = 0) -> int:
    """The released tokenizer folder around a 32000-piece model; returns the vocabulary size."""
    import sentencepiece as spm

    from engine.checkpoint.tokenizer_files import write_tokenizer_folder

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus(seed),
        model_writer=model,
        vocab_size=SP_PIECES,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=2,
        minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        sp_path = Path(tmp) / "tokenizer.model"
        sp_path.write_bytes(model.getvalue())
        write_tokenizer_folder(dest, sp_path)
    added = json.loads((dest / "added_tokens.json").read_text())
    return max(SP_PIECES, max(added.values()) + 1)


# -- the LLM, streamed ----------------------------------------------------------------------


def _llm_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Every stored tensor of the release's ``llm/`` in file order (embeddings, layers, head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    for layer in range(config["num_hidden_layers"]):  # transformers 4.30 saved these (§6.2)
        shapes.append((f"model.layers.{layer}.self_attn.rotary_emb.inv_freq", (head_dim // 2,)))

    def order(item: tuple[str, tuple[int, ...]]) -> tuple[int, int, str]:
        name = item[0]
        if name.startswith("model.layers."):
            return (1, int(name.split(".")[2]), name)
        return (0 if "embed_tokens" in name else 2, 0, name)

    return sorted(shapes, key=order)


def _llm_tensor(
    name: str, shape: tuple[int, ...], generator: torch.Generator, dims: RealDims
) -> torch.Tensor:
    """One tensor with ``randomize_``'s rules, drawn on the device, stored dtype, on the CPU."""
    if name.endswith("rotary_emb.inv_freq"):
        dim = shape[0] * 2
        return 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    value = torch.randn(shape, generator=generator, device=dims.device, dtype=torch.float32)
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        value = value.mul_(0.1).add_(1.0)
    else:
        value = value.div_(math.sqrt(shape[-1]))
    return value.to(dims.dtype).to("cpu")


def write_streamed_llm(
    folder: Path, config: dict[str, Any], dims: RealDims, seed: int, bar: Any
) -> None:
    """``llm/`` as the release lays it out, one shard in memory at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = _llm_shapes(config)
    itemsize = torch.empty(0, dtype=dims.dtype).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > dims.shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    generator = torch.Generator(device=dims.device).manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for index, shard in enumerate(shards):
        shard_name = f"pytorch_model-{index + 1:05d}-of-{len(shards):05d}.bin"
        tensors = {}
        for name, shape in shard:
            tensors[name] = _llm_tensor(name, shape, generator, dims)
            total += tensors[name].numel() * tensors[name].element_size()
            bar.update(tensors[name].numel())
        torch.save(tensors, folder / shard_name)
        weight_map.update(dict.fromkeys(tensors, shard_name))
        del tensors
    write_llm_metadata(folder, config, weight_map, total)


def _module_state(module: torch.nn.Module, seed: int, dims: RealDims) -> dict[str, torch.Tensor]:
    randomize_(module, seed)
    return {k: v.to(dims.dtype).to("cpu").contiguous() for k, v in module.state_dict().items()}


def llm_parameters(config: dict[str, Any]) -> int:
    return sum(math.prod(s) for n, s in _llm_shapes(config) if not n.endswith("inv_freq"))


# -- the whole tree -------------------------------------------------------------------------


def make_real(
    root: Path, dims: RealDims = RealDims(), seed: int = 0, *, progress: bool = False
) -> Path:
    """Writes the tree under ``root``; returns it. See the module docstring."""
    from tqdm import tqdm

    from engine.checkpoint.sdxl import (
        Weights,
        sdxl_unet_config,
        sdxl_vae_config,
        write_detokenizers,
        write_sdxl_base,
    )

    dims.validate()
    arch = dims.arch
    root.mkdir(parents=True, exist_ok=True)
    arch.save(root)
    vocab_size = write_real_tokenizer(root / layout.TOKENIZER_DIR, seed)
    config = llama_config(vocab_size, **{**REAL_LLM, "num_hidden_layers": dims.llm_layers})
    config["torch_dtype"] = str(dims.dtype).removeprefix("torch.")
    total = llm_parameters(config) * len(dims.models)
    bar = tqdm(total=total, desc="make-tiny --dims real (LLM)", unit="param", unit_scale=True,
               disable=not progress)  # fmt: skip

    with torch.device(dims.device):
        vit = QwenViT(arch.vit)
    (root / layout.VIT_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(_module_state(vit, seed + 1, dims), root / layout.VIT_FILE)
    del vit
    logger.info("wrote the ViT (%d layers)", dims.vit_layers)

    for offset, name in enumerate(sorted(dims.models)):
        model_seed = seed + 100 * (offset + 1)
        folder = root / layout.MODEL_FOLDERS[name]
        write_streamed_llm(folder / layout.LLM_SUBDIR, config, dims, model_seed, bar)
        with torch.device(dims.device):
            agent = SeedXAgent(arch, REAL_LLM["hidden_size"])
        (folder / layout.AGENT_FILE).parent.mkdir(parents=True, exist_ok=True)
        torch.save(_module_state(agent, model_seed + 1, dims), folder / layout.AGENT_FILE)
        del agent
        logger.info("wrote %s (%d LLM layers)", name, dims.llm_layers)
    bar.close()

    if dims.detokenizers:
        weights = Weights(dims.device, dims.dtype)
        write_sdxl_base(root, sdxl_unet_config(), sdxl_vae_config(), seed + 7, weights)
        write_detokenizers(root, arch, sdxl_unet_config, seed + 11, weights)
        logger.info("wrote SDXL base and both de-tokenizers")
    return root
