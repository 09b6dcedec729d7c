"""The soak (item 11, reduced count) and the log audit of everything before it (item 12)."""

from __future__ import annotations

import asyncio

import pytest

from seedx.chaos import probes, scenarios
from seedx.chaos.stack import Stack

pytestmark = pytest.mark.slow

SOAK_REQUESTS = 200


def test_soak_leaks_nothing(stack: Stack) -> None:
    figures = asyncio.run(scenarios.soak(stack, SOAK_REQUESTS, settle_s=120))
    print(figures)
    assert figures["ok_200"] == SOAK_REQUESTS, figures
    for name, per_request in figures["rss_sustained_slope_bytes_per_request"].items():
        # ~0: growth that goes on through the whole soak, under 64 KiB per request (a leaked
        # 64x64 image or visual embedding is more; one allocator arena step is not sustained).
        assert per_request < 64 * 1024, (name, figures)
    assert figures["redis_back_to_baseline_s"] is not None, figures["redis_used_memory"]


def test_logs_hold_no_keys_prompts_or_payloads(stack: Stack) -> None:
    figures = probes.logs(stack)
    print(figures)
    assert figures["lines"] > 0
    assert figures["api_keys"] == 0, figures["examples"]
    assert figures["prompts_at_info"] == 0, figures["examples"]
    assert figures["base64_payloads"] == 0, figures["examples"]
