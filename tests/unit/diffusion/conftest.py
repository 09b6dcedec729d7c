"""Session fixtures of the diffusion worker tests: the tiny de-tokenizer serving root."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.checkpoint import layout
from engine.checkpoint.detokenizer_folder import load_detokenizer
from engine.pipelines import DetokenizerPipeline
from tests.unit.diffusion.support import build_detok_root


@pytest.fixture(scope="session")
def detok_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_detok_root(tmp_path_factory.mktemp("diffusion"))


@pytest.fixture
def first_stage(detok_root: Path) -> DetokenizerPipeline:
    return load_detokenizer(layout.serving_detokenizer_dir(detok_root, "first_stage"))


@pytest.fixture
def second_stage(detok_root: Path) -> DetokenizerPipeline:
    return load_detokenizer(layout.serving_detokenizer_dir(detok_root, "second_stage"))
