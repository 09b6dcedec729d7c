"""examples/node/quickstart.mjs, the official ``openai`` npm client, against ``seedx serve``.

Runs where node and npm are present (skipped otherwise); ``npm ci`` installs the example's
locked dependencies into ``examples/node/node_modules`` (gitignored), with npm's download cache
under the repository's ``.cache/npm``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from PIL import Image

from tests.e2e.serve.conftest import ROOT, Served
from tests.tools import missing_tool

EXAMPLE = ROOT / "examples" / "node"


def npm_install() -> None:
    installed = EXAMPLE / "node_modules" / ".package-lock.json"
    lock = EXAMPLE / "package-lock.json"
    if installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--cache", str(ROOT / ".cache" / "npm")],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"


def test_node_openai_client(served: Served, photo: Path, tmp_path: Path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing_tool("node and npm are not installed")
    npm_install()
    result = subprocess.run(
        ["node", str(EXAMPLE / "quickstart.mjs"), str(photo)],
        cwd=tmp_path,
        env={**os.environ, "OPENAI_BASE_URL": f"{served.base_url}/v1", "OPENAI_API_KEY": "demo"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "models: first_stage, second_stage, seed-x-edit, seed-x-i" in result.stdout
    assert "chat: " in result.stdout
    assert "prompt tokens" in result.stdout
    with Image.open(tmp_path / "cube.png") as image:
        assert image.size == (256, 256)
