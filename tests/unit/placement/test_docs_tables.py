"""docs/deploy.md's "Placement" plans are what ``seedx plan`` prints today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location(
    "gen_plan_tables", ROOT / "scripts" / "gen_plan_tables.py"
)
assert _spec is not None
assert _spec.loader is not None
gen_plan_tables = importlib.util.module_from_spec(_spec)
sys.modules["gen_plan_tables"] = gen_plan_tables
_spec.loader.exec_module(gen_plan_tables)


def test_plan_tables_are_current() -> None:
    assert gen_plan_tables.main(["--check"]) == 0, (
        "docs/deploy.md's plans are stale: run python scripts/gen_plan_tables.py"
    )


def test_the_tables_cover_the_inventories_and_sets() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    section = doc[doc.index(gen_plan_tables.BEGIN) : doc.index(gen_plan_tables.END)]
    for inventory in (
        "1x24GB",
        "1x48GB",
        "1x80GB",
        "1x141GB",
        "2x24GB",
        "4x24GB",
        "2x80GB",
        "8x80GB",
    ):
        assert f"<summary><code>--gpus {inventory}</code></summary>" in section
        for llms in ("--llm seed-x-i --no-env", "--llm seed-x-i --llm seed-x-edit --no-env",
                     "--llm seed-x --llm seed-x-i --llm seed-x-edit --no-env"):  # fmt: skip
            assert f"$ seedx plan --gpus {inventory} {llms}   # exit " in section
