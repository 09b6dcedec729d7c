"""After a Redis outage, workers whose heartbeats expired meanwhile are not taken for dead.

A heartbeat's TTL runs while Redis is down (and a restart drops expired keys), so right after
the job store comes back no worker has a heartbeat until each writes its next one. Answering
503 "no worker is running" then would fail requests that the workers, reconnecting, are about
to take: the chaos suite's Redis restart saw exactly that (503s after the first 200).
"""

from __future__ import annotations

import time

import pytest

from server.admission import ModelDirectory, StageModel
from tests.unit.server.fakes import FakeBackend
from workers.errors import ModelNotFound, Unavailable

LLM = StageModel("llm", "seed-x-i")
DETOK = StageModel("diffusion", "first_stage")
TTL_S = 0.5


async def _directory_that_saw(backend: FakeBackend) -> ModelDirectory:
    backend.serve("llm", "seed-x-i")
    backend.serve("diffusion", "first_stage")
    directory = ModelDirectory(backend, ttl_s=0, heartbeat_ttl_s=TTL_S)
    await directory.require(LLM, [DETOK])  # the gateway has seen both served
    return directory


async def test_workers_seen_before_an_outage_count_as_served_for_one_ttl_after_it() -> None:
    backend = FakeBackend()
    directory = await _directory_that_saw(backend)
    backend.workers.clear()  # every heartbeat expired while Redis was down
    now = time.monotonic()
    backend.last_outage = (now - 3.0 * TTL_S, now)  # a long outage, just over
    await directory.require(LLM, [DETOK])  # queued for the reconnecting workers, no 503
    time.sleep(TTL_S)
    with pytest.raises(Unavailable, match="no llm worker"):  # a TTL later, absence is death
        await directory.require(LLM)
    await directory.close()


async def test_a_worker_gone_long_before_the_outage_is_still_missing() -> None:
    backend = FakeBackend()
    directory = await _directory_that_saw(backend)
    backend.workers.clear()
    time.sleep(TTL_S * 1.2)
    await directory.workers(fresh=True)  # the gateway saw it gone before the outage ...
    now = time.monotonic()
    backend.last_outage = (now - 0.1, now)  # ... which began a TTL after its last sighting
    with pytest.raises(Unavailable, match="no llm worker"):
        await directory.require(LLM)
    await directory.close()


async def test_an_outage_makes_no_unknown_model_known() -> None:
    backend = FakeBackend()
    directory = await _directory_that_saw(backend)
    now = time.monotonic()
    backend.last_outage = (now - 1.0, now)
    with pytest.raises(ModelNotFound):
        await directory.require(StageModel("llm", "never-served"))
    with pytest.raises(Unavailable, match="second_stage"):
        await directory.require(LLM, [StageModel("diffusion", "second_stage")])
    await directory.close()
