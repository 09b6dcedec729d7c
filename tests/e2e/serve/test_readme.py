"""The README's quickstart, run as written against a live ``seedx serve`` (the demo).

Every ```bash and ```python block of the "Quickstart" section runs, in order, except those right
after a ``<!-- readme-test: skip (...) -->`` comment. Bash blocks run one by one in ``bash -e -o
pipefail``; Python blocks run as one script, each after the previous and sharing names as when a
reader pastes them into one session (after the bash blocks without curl, which make the inputs).
Each test runs in a fresh directory. The only change made to the blocks is the base URL, and only
when port 8000 was taken: ``http://localhost:8000`` becomes the port the tests' server got.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.e2e.serve.conftest import ROOT, Served
from tests.tools import missing_tool

README = ROOT / "README.md"
README_URL = "http://localhost:8000"
FENCE = re.compile(r"^ *```(\w+)\n(.*?)^ *```$", re.DOTALL | re.MULTILINE)
SKIP = re.compile(r"<!-- readme-test: skip[^>]*-->\s*$")

# What the examples write: each must be a picture of the size they asked for.
BASH_OUTPUTS = {"cat.png": 256, "cube.png": 256, "edited.png": 256, "variation.png": 256}
PYTHON_OUTPUTS = {
    "cat.png": 256,
    "cube.png": 256,
    "lighthouse.png": 256,
    "preview-0.png": None,  # previews are decoded cheaply at latent size
    "edited.png": 256,
    "variation-0.png": 256,
    "variation-1.png": 256,
}


@dataclass(frozen=True)
class Block:
    language: str
    line: int
    code: str


def quickstart_blocks(text: str) -> list[Block]:
    start = text.index("\n## Quickstart\n")
    end = text.index("\n## ", start + 1)
    blocks = []
    for match in FENCE.finditer(text, start, end):
        if SKIP.search(text[: match.start()].rstrip(" ")):
            continue
        line = text.count("\n", 0, match.start(2)) + 1
        blocks.append(Block(match[1], line, match[2]))
    return blocks


def with_base_url(code: str, served: Served) -> str:
    return code.replace(README_URL, served.base_url)


def run_env() -> dict[str, str]:
    """The environment a reader has after ``make install``: this venv's tools on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def check_outputs(folder: Path, expected: dict[str, int | None]) -> None:
    for name, side in expected.items():
        path = folder / name
        assert path.is_file(), f"the README's examples should have written {name}"
        with Image.open(path) as image:
            image.load()
            if side is not None:
                assert image.size == (side, side), name


def test_quickstart_has_every_endpoint() -> None:
    code = "\n".join(b.code for b in quickstart_blocks(README.read_text()))
    for needle in (
        "/v1/models", "/v1/chat/completions", "/v1/images/generations", "/v1/images/edits",
        "/v1/images/variations", "client.models.list", "client.chat.completions.create",
        "client.images.generate", "client.images.edit", "client.images.create_variation",
        '"stream": true', "stream=True", "annotations", "image_options", "partial_images",
        "/v1/responses", "client.responses.create", "previous_response_id",
    ):  # fmt: skip
        assert needle in code, f"the quickstart should show {needle}"


def test_readme_curl_examples(served: Served, tmp_path: Path) -> None:
    blocks = [b for b in quickstart_blocks(README.read_text()) if b.language == "bash"]
    assert len(blocks) >= 9
    if any("jq " in b.code for b in blocks) and shutil.which("jq") is None:
        missing_tool("the README's curl examples use jq (apt-get install jq)")
    for block in blocks:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", with_base_url(block.code, served)],
            cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        where = f"README.md:{block.line}"
        assert result.returncode == 0, f"{where} failed:\n{result.stdout[-2000:]}{result.stderr}"
        assert '"error"' not in result.stdout, f"{where} got an error:\n{result.stdout[-2000:]}"
    check_outputs(tmp_path, BASH_OUTPUTS)


DRIVER = """
import json, sys
ns = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    print(f"--- README.md:{line}", flush=True)
    exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), ns)
"""


def test_readme_python_examples(served: Served, tmp_path: Path) -> None:
    every = quickstart_blocks(README.read_text())
    for setup in (b for b in every if b.language == "bash" and "curl" not in b.code):
        subprocess.run(["bash", "-e", "-c", setup.code], cwd=tmp_path, env=run_env(), check=True)
    blocks = [b for b in every if b.language == "python"]
    assert len(blocks) >= 10
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([[b.line, with_base_url(b.code, served)] for b in blocks]))
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(spec)],
        cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    check_outputs(tmp_path, PYTHON_OUTPUTS)
