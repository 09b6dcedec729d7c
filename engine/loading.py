"""Loading a serving-layout LLM folder (written by ``seedx convert``) into PyTorch modules.

The reference (``engine.reference``) and the tests use this; the vLLM model class reads the same
shards through vLLM's own loader, with the same key names (``model.*``, ``lm_head.*``,
``vit.*``, ``agent.*``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.agent import PictureEncoder, SeedXAgent
from engine.arch import SeedXArch
from engine.checkpoint import layout
from engine.checkpoint.errors import CheckpointError
from engine.checkpoint.safetensors_io import iter_tensors
from engine.vit import QwenViT


@dataclass(frozen=True)
class LlmFolder:
    """A serving LLM folder: where it is, what model it is, and its sizes."""

    path: Path
    model: str
    config: dict[str, Any]
    arch: SeedXArch
    detokenizer: str

    @classmethod
    def read(cls, path: Path) -> LlmFolder:
        config_path = path / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{path}: no config.json (is this a `seedx convert` output?)")
        config = json.loads(config_path.read_text())
        seedx = config.get("seedx")
        if not isinstance(seedx, dict):
            raise CheckpointError(f"{config_path}: no 'seedx' section: run `seedx convert` first")
        return cls(
            path, seedx["model"], config, SeedXArch.from_dict(seedx["arch"]), seedx["detokenizer"]
        )

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    def llama_config(self) -> Any:
        from transformers import LlamaConfig

        kwargs = {k: v for k, v in self.config.items() if k not in ("seedx", "architectures")}
        return LlamaConfig(**kwargs)


def _load_into(module: torch.nn.Module, folder: Path, prefix: str) -> None:
    state = {name[len(prefix) :]: tensor for name, tensor in iter_tensors(folder, prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: prefix {prefix!r}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def load_llm(folder: LlmFolder, dtype: torch.dtype, device: str | torch.device = "cpu") -> Any:
    """The LLaMA trunk as transformers' ``LlamaForCausalLM`` (the reference implementation)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(folder.llama_config())
    llm_state = {
        name: tensor
        for name, tensor in iter_tensors(folder.path)
        if name.startswith(("model.", "lm_head."))
    }
    model.load_state_dict(llm_state, strict=True, assign=True)
    # RoPE frequencies are a non-persistent buffer, still on the meta device: rebuild them.
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device(device):  # the constructor's signature differs across versions
        model.model.rotary_emb = LlamaRotaryEmbedding(config=model.config)
    model = model.to(device=device, dtype=dtype).eval()
    return model


def load_picture_encoder(
    folder: LlmFolder, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> PictureEncoder:
    """ViT + agent (resamplers, per-tile embedding) from the ``vit.*`` and ``agent.*`` keys."""
    with torch.device("meta"):
        vit = QwenViT(folder.arch.vit)
        agent = SeedXAgent(folder.arch, folder.hidden_size)
    _load_into(vit, folder.path, "vit.")
    _load_into(agent, folder.path, "agent.")
    return PictureEncoder(vit, agent).to(device=device, dtype=dtype).eval()


def resolve_llm_folder(path: Path, model: str | None = None) -> Path:
    """Accepts an LLM folder itself or a serving root with ``seedx_serving.json``."""
    if (path / "config.json").is_file():
        return path
    manifest_path = path / layout.SERVING_MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{path}: neither an LLM folder nor a serving root ({layout.SERVING_MANIFEST})"
        )
    manifest = json.loads(manifest_path.read_text())
    models = manifest.get("models", {})
    if model is None:
        model = "seed-x-i" if "seed-x-i" in models else next(iter(sorted(models)), None)
    if model not in models:
        raise CheckpointError(f"{path}: model {model!r} not converted; have {sorted(models)}")
    return path / models[model]["path"]
