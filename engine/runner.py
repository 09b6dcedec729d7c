"""Building the reference from a serving tree: the LLM stage and the de-tokenizer stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import layout
from engine.checkpoint.errors import CheckpointError
from engine.loading import LlmFolder, load_llm, load_picture_encoder, resolve_llm_folder
from engine.reference import SeedXReference
from engine.tokenizer import SeedXTokenizer


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA as the SEED-X scripts run; fp32 on CPU, where half matmuls are slow."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_reference(
    root: Path, llm: str | None, dtype: torch.dtype, device: str | torch.device
) -> SeedXReference:
    folder = LlmFolder.read(resolve_llm_folder(root, llm))
    return SeedXReference(
        load_llm(folder, dtype, device),
        load_picture_encoder(folder, dtype, device),
        SeedXTokenizer(folder.path),
        folder,
    )


def detokenizer_folder(root: Path, stage: str) -> Path:
    """The de-tokenizer folder of a serving root, checked against its manifest."""
    manifest_path = root / layout.SERVING_MANIFEST
    if manifest_path.is_file():
        known = json.loads(manifest_path.read_text()).get("detokenizers", {})
        if stage not in known:
            raise CheckpointError(
                f"{root}: de-tokenizer {stage!r} not converted; have {sorted(known)}"
            )
        return root / known[stage]["path"]
    folder = layout.serving_detokenizer_dir(root, stage)
    if not folder.is_dir():
        raise CheckpointError(f"{root}: no {folder.relative_to(root)} (run `seedx convert` first)")
    return folder


def load_detokenizer_stage(
    root: Path, stage: str, dtype: torch.dtype, device: str | torch.device
) -> Any:
    from engine.checkpoint.detokenizer_folder import load_detokenizer

    return load_detokenizer(detokenizer_folder(root, stage), device=device, dtype=dtype)
