"""``seedx convert SRC OUT``: the released SEED-X tree -> the serving layout the workers load.

For each LLM (``seed-x``, ``seed-x-i``, ``seed-x-edit``) one HF-style folder whose
``config.json`` names the vLLM architecture ``SeedXForCausalLM`` and whose safetensors shards
hold everything the LLM worker runs: the LLaMA (``model.*``, ``lm_head.*``), the ViT
(``vit.*``, Qwen's key names and per-head QKV layout kept), the input and output resamplers and
the per-tile embedding (``agent.*``). For each de-tokenizer one diffusers-style folder
(``engine.checkpoint.convert_detokenizer``).

A real tree is ~100 GB of fp32 pickles, so the conversion streams: each source shard is
memory-mapped, checked key by key against the shapes the model classes expect, cast, and written
as one output shard before the next is opened. Peak RAM stays near the largest shard. The output
is deterministic (sorted keys, fixed metadata), so converting twice gives identical bytes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine.agent import SeedXAgent
from engine.arch import SeedXArch
from engine.checkpoint import layout
from engine.checkpoint.diffusers_weights import load_pickle
from engine.checkpoint.errors import CheckpointError
from engine.checkpoint.safetensors_io import save_shard, shard_name, write_index
from engine.vit import QwenViT

logger = logging.getLogger(__name__)

SERVING_ARCHITECTURE = "SeedXForCausalLM"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # transformers-4.30 buffers (§6.2)


def find_llm_config(model_dir: Path) -> Path:
    """``llm/config.json``, or the model root's ``config.json`` as in the split Hub repos (§6.1)."""
    for candidate in (model_dir / layout.LLM_SUBDIR / "config.json", model_dir / "config.json"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{model_dir}: no config.json in {layout.LLM_SUBDIR}/ or the model root")


def _llm_shards(llm_dir: Path) -> list[Path]:
    index = llm_dir / layout.LLM_INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [llm_dir / f for f in files]
    single = llm_dir / "pytorch_model.bin"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{llm_dir}: neither {layout.LLM_INDEX_FILE} nor pytorch_model.bin")


def expected_shapes(config: dict[str, Any], arch: SeedXArch) -> dict[str, tuple[int, ...]]:
    """Every serving key with its shape, from the model classes built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_kwargs = {k: v for k, v in config.items() if k != "seedx"}
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**llama_kwargs))
        vit = QwenViT(arch.vit)
        agent = SeedXAgent(arch, config["hidden_size"])
    shapes = {k: tuple(v.shape) for k, v in llm.state_dict().items()}
    shapes.update({f"vit.{k}": tuple(v.shape) for k, v in vit.state_dict().items()})
    shapes.update({f"agent.{k}": tuple(v.shape) for k, v in agent.state_dict().items()})
    return shapes


class _ShardWriter:
    """Checks, casts and writes output shards while remembering which keys were seen."""

    def __init__(
        self,
        out_dir: Path,
        shapes: dict[str, tuple[int, ...]],
        dtype: torch.dtype,
        total_shards: int,
        progress: tqdm | None,
    ) -> None:
        self.out_dir, self.shapes, self.dtype = out_dir, shapes, dtype
        self.total_shards, self.progress = total_shards, progress
        self.seen: set[str] = set()
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.count = 0

    def write(self, source: Path, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for key, tensor in items:
            expected = self.shapes.get(key)
            if expected is None:
                raise CheckpointError(f"{source}: unexpected key {key!r}")
            if tuple(tensor.shape) != expected:
                raise CheckpointError(
                    f"{source}: key {key!r} has shape {tuple(tensor.shape)}, expected {expected}"
                )
            if key in self.seen:
                raise CheckpointError(f"{source}: key {key!r} appears twice")
            self.seen.add(key)
            tensors[key] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
        name = shard_name(self.count, self.total_shards)
        save_shard(tensors, self.out_dir / name)
        self.count += 1
        self.weight_map.update(dict.fromkeys(tensors, name))
        self.total_size += sum(t.numel() * t.element_size() for t in tensors.values())
        if self.progress is not None:
            self.progress.update(1)

    def finish(self, source: Path) -> None:
        missing = sorted(set(self.shapes) - self.seen)
        if missing:
            raise CheckpointError(f"{source}: missing keys ({len(missing)}): {missing[:8]}")
        write_index(self.out_dir, self.weight_map, self.total_size)


def _serving_config(
    config: dict[str, Any], model: str, arch: SeedXArch, dtype: str
) -> dict[str, Any]:
    serving = {k: v for k, v in config.items() if not k.startswith("_")}
    serving.update(
        architectures=[SERVING_ARCHITECTURE],
        torch_dtype=dtype,
        seedx={
            "model": model,
            "arch": arch.to_dict(),
            "detokenizer": layout.DETOKENIZER_FOR_MODEL[model],
        },
    )
    return serving


def convert_llm(
    src: Path, out: Path, model: str, arch: SeedXArch, dtype: str = "float16", progress: bool = True
) -> Path:
    """Writes ``OUT/<model>/``: config, tokenizer files and weight shards; returns the folder."""
    model_dir = src / layout.MODEL_FOLDERS[model]
    if not model_dir.is_dir():
        raise CheckpointError(f"missing folder: {model_dir}")
    config = json.loads(find_llm_config(model_dir).read_text())
    shards = _llm_shards(model_dir / layout.LLM_SUBDIR)
    out_dir = out / model
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    shapes = expected_shapes(config, arch)
    bar = tqdm(total=len(shards) + 2, desc=f"convert {model}", unit="shard", disable=not progress)
    writer = _ShardWriter(out_dir, shapes, DTYPES[dtype], len(shards) + 2, bar)
    for shard in shards:
        state = load_pickle(shard)
        writer.write(
            shard, ((k, v) for k, v in sorted(state.items()) if not k.endswith(IGNORED_SUFFIXES))
        )
        del state
    vit_file = src / layout.VIT_FILE
    writer.write(vit_file, ((f"vit.{k}", v) for k, v in sorted(load_pickle(vit_file).items())))
    agent_file = model_dir / layout.AGENT_FILE
    agent_state = load_pickle(agent_file)
    if any(k.startswith("llm.") for k in agent_state):
        raise CheckpointError(
            f"{agent_file}: holds LLM weights (llm.*): fine-tuned LoRA agents are not supported; "
            "merge the LoRA into llm/ first"
        )
    writer.write(agent_file, ((f"agent.{k}", v) for k, v in sorted(agent_state.items())))
    writer.finish(model_dir)
    bar.close()
    tokenizer_dir = src / layout.TOKENIZER_DIR
    for name in layout.TOKENIZER_FILES:
        if not (tokenizer_dir / name).is_file():
            raise CheckpointError(f"missing file: {tokenizer_dir / name}")
        shutil.copyfile(tokenizer_dir / name, out_dir / name)
    _write_json(out_dir / "config.json", _serving_config(config, model, arch, dtype))
    # SEED-X decodes greedily; the released generation_config (temperature 0.9, top_p 0.6) is unused
    # by the reference (§5.5), so we do not let serving engines pick it up as a default.
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    )
    return out_dir


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def available_models(src: Path) -> list[str]:
    return [m for m, folder in sorted(layout.MODEL_FOLDERS.items()) if (src / folder).is_dir()]


def convert(
    src: Path,
    out: Path,
    models: list[str] | None = None,
    dtype: str = "float16",
    progress: bool = True,
) -> dict[str, Any]:
    """Converts the chosen LLMs (default: all present) and the de-tokenizers they and variations
    need, then writes the ``seedx_serving.json`` manifest. Returns the manifest."""
    from engine.checkpoint.convert_detokenizer import convert_detokenizer

    if not src.is_dir():
        raise CheckpointError(f"source tree not found: {src}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    arch = SeedXArch.load(src)
    models = models or available_models(src)
    if not models:
        raise CheckpointError(
            f"{src}: no model folder ({', '.join(layout.MODEL_FOLDERS.values())})"
        )
    out.mkdir(parents=True, exist_ok=True)
    for model in models:
        convert_llm(src, out, model, arch, dtype, progress)
    stages = sorted({layout.DETOKENIZER_FOR_MODEL[m] for m in models} | {"first_stage"})
    for stage in stages:
        if layout.released_detokenizer_file(src, stage).is_file():
            convert_detokenizer(src, out, stage, arch, DTYPES[dtype], progress)
        else:
            logger.warning("no %s de-tokenizer in %s: skipped", stage, src)
    manifest = _merge_manifest(out, models, dtype)
    return manifest


def _merge_manifest(out: Path, models: list[str], dtype: str) -> dict[str, Any]:
    path = out / layout.SERVING_MANIFEST
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    manifest.setdefault("models", {})
    for model in models:
        manifest["models"][model] = {
            "path": model,
            "detokenizer": layout.DETOKENIZER_FOR_MODEL[model],
        }
    manifest["detokenizers"] = {
        stage: {"path": layout.SERVING_DETOKENIZER_DIR.format(stage=stage)}
        for stage in layout.DETOKENIZER_STAGES
        if layout.serving_detokenizer_dir(out, stage).is_dir()
    }
    manifest["dtype"] = dtype
    _write_json(path, manifest)
    return manifest
