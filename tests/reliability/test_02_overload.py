"""4x overload on chat and on images (item 1): 200 or a fast 429, nothing hung, lost or decoded."""

from __future__ import annotations

import asyncio

import pytest

from seedx.chaos import scenarios
from seedx.chaos.stack import Stack

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("route", ["chat", "images"])
def test_overload_is_answered_200_or_429(stack: Stack, route: str) -> None:
    figures = asyncio.run(scenarios.overload(stack, route, duration_s=6.0))
    print(figures)
    assert figures["rejected_429"] > 0, f"4x the bound never hit admission control: {figures}"
    assert figures["ok_200"] > 0, figures
    assert figures["share_200_or_429"] == 1.0, figures
    assert figures["hung"] == 0, figures
    assert figures["lost"] == 0, figures
    assert figures["images_decoded_for_rejected"] == 0, figures
    # Issue 9's goal: 50 ms (the gateway's own time, from its request log). The gateway costs
    # ~0.5 ms per 429 in-process; what remained was CPU starvation next to four busy workers on
    # two cores, fixed by running workers at a lower priority (seedx.supervisor.WORKER_NICENESS):
    # chat 120 ms -> 10 ms p99.
    assert figures["p99_time_to_429_ms"] < 50, figures
