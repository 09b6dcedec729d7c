"""What a test does when a tool it needs (chromium, node, jq, docker-compose, vLLM) is missing.

On a developer's machine it skips, saying what to install. In CI (``CI=true``) it fails:
``.ci/run`` installs every tool the suite uses, so a missing one means a broken install step,
and a skip would hide it behind a green run (issue 21: CI gates what ``make all`` gates).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing_tool(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI installs every tool the tests use, so this is a failure")
    pytest.skip(reason)
