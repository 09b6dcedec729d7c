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
    # Issue 9's goal is 50 ms p99 (the gateway's own time, from its request log); `seedx bench
    # chaos` reports it (8.2 ms chat, 15.8 ms images in the full run). A 429 costs ~0.5 ms
    # in-process; the rest is scheduling on CI's two cores shared with the load generator, Valkey
    # and four workers (niced, seedx.supervisor.WORKER_NICENESS), which varied 8-79 ms p99 across
    # CI runs, so the goal is tracked in the issue, and this bound catches a rejection that waits
    # on real work (image decoding, a model step), which costs hundreds of ms.
    assert figures["p99_time_to_429_ms"] < 250, figures
