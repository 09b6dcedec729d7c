"""Poison jobs, SIGKILLed workers and a Redis restart under load (items 2, 3, 5); answers
resumed after a crash are byte-identical (issue 21 item 5)."""

from __future__ import annotations

import asyncio

import pytest

from seedx.chaos import resume, scenarios
from seedx.chaos.stack import QUEUE, Stack

pytestmark = pytest.mark.slow


def test_poison_job_is_dead_lettered_and_others_are_served(stack: Stack) -> None:
    figures = asyncio.run(scenarios.poison(stack, others=8))
    print(figures)
    assert figures["dead_lettered"], figures
    assert figures["deliveries"] == int(QUEUE["MAX_DELIVERIES"]) + 1, figures
    assert figures["requester_told"] == "dead_lettered", figures
    assert figures["others_ok"] == figures["others"], figures


@pytest.mark.parametrize("stage", ["llm", "diffusion"])
def test_sigkilled_worker_loses_nothing(stack: Stack, stage: str) -> None:
    figures = asyncio.run(scenarios.kill_worker(stack, stage, jobs=4))
    print(figures)
    assert figures["in_flight_on_victim"] > 0, figures
    assert figures["lost"] == 0, figures
    assert figures["duplicates_visible"] == 0, figures
    assert figures["recovery_s"] < 20, figures
    assert figures["orphans_left"] == 0, figures
    if stage == "llm":  # vLLM's engine core (and its worker) ran under the victim
        assert figures["child_processes"] >= 1, figures


def test_streams_resumed_after_a_crash_are_byte_identical(stack: Stack) -> None:
    figures = asyncio.run(resume.resume(stack, runs=2, streams=4))
    print(figures)
    assert "error" not in figures, figures
    assert figures["failed"] == 0, figures
    assert figures["streams_resumed"] > 0, figures
    assert figures["byte_identical"] == figures["streams_compared"] == 8, figures


def test_redis_restart_under_load(stack: Stack) -> None:
    figures = asyncio.run(scenarios.redis_restart(stack))
    print(figures)
    assert figures["hung"] == 0, figures
    assert set(figures["during_outage"]) <= {"200", "503"}, figures
    assert figures["recovery_s"] < 5.0, figures
    assert figures["failures_after_recovery"] == 0, figures
