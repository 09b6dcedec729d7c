"""Shared tiny de-tokenizer fixtures: a released-layout tree and its converted serving folders.

Built once per session (well under a second): tiny SDXL base, both released de-tokenizer
checkpoints, a Qwen-layout ViT and the arch file, then ``convert_detokenizer`` for both stages.
Pipelines are loaded per test, so spies and caches never leak between tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.arch import SeedXArch, tiny_arch
from engine.checkpoint import layout
from engine.checkpoint.convert_detokenizer import convert_detokenizer, load_detokenizer
from engine.pipelines import DetokenizerPipeline
from tests.unit.engine.detok_fixtures import write_detok_tree


@pytest.fixture(scope="session")
def detok_arch() -> SeedXArch:
    return tiny_arch()


@pytest.fixture(scope="session")
def detok_tree(tmp_path_factory: pytest.TempPathFactory, detok_arch: SeedXArch) -> Path:
    return write_detok_tree(tmp_path_factory.mktemp("released"), detok_arch)


@pytest.fixture(scope="session")
def detok_serving(
    detok_tree: Path, detok_arch: SeedXArch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("serving")
    for stage in layout.DETOKENIZER_STAGES:
        convert_detokenizer(detok_tree, out, stage, detok_arch, torch.float32, progress=False)
    return out


@pytest.fixture
def first_stage(detok_serving: Path) -> DetokenizerPipeline:
    return load_detokenizer(layout.serving_detokenizer_dir(detok_serving, "first_stage"))


@pytest.fixture
def second_stage(detok_serving: Path) -> DetokenizerPipeline:
    return load_detokenizer(layout.serving_detokenizer_dir(detok_serving, "second_stage"))
