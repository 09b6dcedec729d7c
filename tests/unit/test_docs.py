"""The documentation cannot drift from the code: docs/configuration.md is generated from the
settings classes, and every ``SEEDX_*`` variable the README or the deploy guide names exists."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "gen_config_reference", ROOT / "scripts" / "gen_config_reference.py"
)
assert _spec is not None
assert _spec.loader is not None
gen_config_reference = importlib.util.module_from_spec(_spec)
sys.modules["gen_config_reference"] = gen_config_reference
_spec.loader.exec_module(gen_config_reference)

# Variables read by something other than a settings class.
OTHER_VARIABLES = {
    "SEEDX_CACHE_DIR", "SEEDX_TEST_REDIS_URL", "SEEDX_ARTIFACTS_DIR", "SEEDX_CHROMIUM",
    "SEEDX_REGEN_GOLDENS",  # tests/deploy/test_colocated.py rewrites its golden renders
}  # fmt: skip


def test_configuration_reference_is_current() -> None:
    assert gen_config_reference.main(["--check"]) == 0, (
        "docs/configuration.md is stale: run python scripts/gen_config_reference.py"
    )


def test_documented_variables_exist() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    known = set(re.findall(r"`(SEEDX_[A-Z0-9_<>]+)`", reference)) | OTHER_VARIABLES
    patterns = [re.compile(re.escape(k).replace("<P>", "(GATEWAY|LLM|DIFFUSION)")) for k in known]
    for doc in ("README.md", "docs/deploy.md"):
        for name in set(re.findall(r"\bSEEDX_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / doc).read_text())):
            if name.endswith("_") or not any(p.fullmatch(name) for p in patterns):
                # prefixes alone (SEEDX_GATEWAY_*) are fine; full names must exist
                assert any(k.startswith(name + "_") for k in known), f"{doc}: unknown {name}"
