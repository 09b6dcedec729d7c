"""Test tiers by folder (LitServe's habit): integration and e2e are tagged from their path;
gpu and slow are opt-in (``--run-gpu``; ``--run-slow``, RUN_SLOW=1, or CI=true in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu")
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_gpu = config.getoption("--run-gpu")
    # CI runs the slow tier too (the reliability suite, with reduced counts); people opt in.
    run_slow = (
        config.getoption("--run-slow")
        or os.environ.get("RUN_SLOW") == "1"
        or os.environ.get("CI") == "true"
    )
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(TESTS.resolve())
        tier = rel.parts[0] if len(rel.parts) > 1 else ""
        if tier in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))
        if "gpu" in item.keywords and not run_gpu:
            item.add_marker(pytest.mark.skip(reason="needs --run-gpu"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="needs RUN_SLOW=1 or --run-slow"))


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SEED-X tree in the released layout (``seedx make-tiny``)."""
    from engine.checkpoint.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "SEED-X-17B", seed=0)


@pytest.fixture(scope="session")
def serving_tree(tiny_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``seedx convert`` of the tiny tree, in float32 so parity checks are tight."""
    from engine.checkpoint.convert import convert

    out = tmp_path_factory.mktemp("serving") / "seedx"
    convert(tiny_tree, out, dtype="float32", progress=False)
    return out
