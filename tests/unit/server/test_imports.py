"""The gateway image has no torch: importing the app must not pull in the model stack."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "torch",
    "vllm",
    "diffusers",
    "transformers",
    "engine",
    "workers.llm",
    "workers.diffusion",
)


def test_app_imports_without_the_model_stack() -> None:
    code = (
        "import sys, server.app, server.main, server.bench; "
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} "
        f"or any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r})]; "
        "print(','.join(sorted(bad)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
