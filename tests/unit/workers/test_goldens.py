"""Frozen JSON of every v1 message (like TGI's snapshots): a breaking change fails here.

Two checks per golden:

- *compatibility*: the golden (what an older peer sends) still parses with today's models and
  means the same thing, so a rolling upgrade cannot break a v1 peer;
- *snapshot*: today's JSON of the example equals the golden, so any change of the contract,
  even an additive one, shows up in review as a golden diff.

After an intended, compatible change regenerate with ``SEEDX_REGEN_GOLDENS=1 pytest <this file>``
and commit the diff. A breaking change needs a v2 module instead (STYLE.md §2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.workers import examples

GOLDEN_DIR = Path(__file__).resolve().parents[3] / "workers" / "golden"
REGEN = os.environ.get("SEEDX_REGEN_GOLDENS") == "1"


def _golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"v1_{name}.json"


def _current(name: str) -> Any:
    return json.loads(examples.MESSAGES[name].model_dump_json())


@pytest.mark.parametrize("name", sorted(examples.MESSAGES))
def test_snapshot_matches_golden(name: str) -> None:
    path = _golden_path(name)
    if REGEN:
        path.write_text(json.dumps(_current(name), indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"missing golden {path.name}; run with SEEDX_REGEN_GOLDENS=1"
    assert _current(name) == json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(examples.MESSAGES))
def test_golden_still_parses_to_the_same_message(name: str) -> None:
    message = examples.MESSAGES[name]
    parsed = type(message).model_validate_json(_golden_path(name).read_text())
    assert parsed == message


def test_every_golden_has_an_example() -> None:
    """A golden without an example would silently stop being checked."""
    names = {path.stem.removeprefix("v1_") for path in GOLDEN_DIR.glob("v1_*.json")}
    assert names == set(examples.MESSAGES)
