"""A client that leaves mid-stream or mid-denoise stops the worker within a second (item 4)."""

from __future__ import annotations

import asyncio

import pytest

from seedx.chaos import scenarios
from seedx.chaos.stack import Stack

pytestmark = pytest.mark.slow


def test_leaving_a_stream_stops_the_llm_worker(stack: Stack) -> None:
    figures = asyncio.run(scenarios.disconnect_stream(stack))
    print(figures)
    assert figures["stop_s"] < 1.0, figures


def test_leaving_mid_denoise_stops_the_diffusion_worker(stack: Stack) -> None:
    figures = asyncio.run(scenarios.disconnect_denoise(stack))
    print(figures)
    assert figures["denoising_when_left"], figures
    assert figures["stop_s"] < 1.0, figures
    assert figures["wasted_steps"] < figures["steps_requested"] / 2, figures
