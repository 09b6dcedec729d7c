"""The tiny de-tokenizer serving root for the diffusion worker's integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.diffusion.support import build_detok_root


@pytest.fixture(scope="session")
def detok_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_detok_root(tmp_path_factory.mktemp("diffusion"))
