"""Admission reads refreshed ahead: requests under steady traffic never wait on Redis."""

from __future__ import annotations

import asyncio

import pytest

from server.admission import AdmissionControl, ModelDirectory, StageModel
from server.settings import Admission
from tests.unit.server.fakes import FakeBackend
from workers.errors import Overloaded, Unavailable

LLM = StageModel("llm", "seed-x-i")


class CountingBackend(FakeBackend):
    """Counts reads; ``gate`` (when set) holds every read until it is opened."""

    def __init__(self) -> None:
        super().__init__()
        self.load_reads = 0
        self.worker_reads = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def _maybe_wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise Unavailable("redis is down")

    async def queue_load(self, stage, model):  # type: ignore[no-untyped-def]
        self.load_reads += 1
        await self._maybe_wait()
        return await super().queue_load(stage, model)

    async def live_workers(self):  # type: ignore[no-untyped-def]
        self.worker_reads += 1
        await self._maybe_wait()
        return await super().live_workers()


def control(backend: FakeBackend, ttl: float, max_age: float) -> AdmissionControl:
    settings = Admission(llm_max_queue=10, stats_ttl_s=ttl, stats_max_age_s=max_age)
    return AdmissionControl(backend, settings)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_fresh_read_is_reused() -> None:
    backend = CountingBackend()
    admission = control(backend, ttl=5, max_age=30)
    await admission.admit({LLM: 1})
    await admission.admit({LLM: 1})
    assert backend.load_reads == 1


async def test_a_stale_read_answers_while_one_background_read_replaces_it() -> None:
    backend = CountingBackend()
    admission = control(backend, ttl=0, max_age=30)
    await admission.admit({LLM: 1})  # no value yet: awaited
    backend.loads[("llm", "seed-x-i")] = 9
    backend.gate = asyncio.Event()  # Redis is slow: the refresh does not finish yet
    for _ in range(3):
        await admission.admit({LLM: 1})  # answered from the old value (1, 2, 3 admitted)
    await settle()
    assert backend.load_reads == 2  # one background read, not one per request
    backend.gate.set()
    await settle()
    with pytest.raises(Overloaded, match=r"queue .* is full"):
        await admission.admit({LLM: 2})  # the refreshed depth (9) + 2 > 10
    await admission.close()


async def test_a_read_older_than_max_age_is_awaited() -> None:
    backend = CountingBackend()
    admission = control(backend, ttl=0, max_age=0)
    await admission.admit({LLM: 1})
    backend.loads[("llm", "seed-x-i")] = 10
    with pytest.raises(Overloaded, match=r"queue .* is full"):
        await admission.admit({LLM: 1})
    assert backend.load_reads == 2


async def test_a_failed_background_read_keeps_the_old_value_and_raises_nothing() -> None:
    backend = CountingBackend()
    admission = control(backend, ttl=0, max_age=30)
    await admission.admit({LLM: 1})
    backend.fail = True
    await admission.admit({LLM: 1})  # the refresh fails in the background
    await settle()
    await admission.admit({LLM: 1})
    assert backend.load_reads >= 2


async def test_the_directory_refreshes_ahead_too() -> None:
    backend = CountingBackend()
    backend.serve("llm", "seed-x-i")
    directory = ModelDirectory(backend, ttl_s=0, max_age_s=60)
    assert await directory.served("llm") == {"seed-x-i"}
    backend.workers.clear()
    assert await directory.served("llm") == {"seed-x-i"}  # stale answer, refresh started
    await settle()
    assert await directory.served("llm") == set()
    assert backend.worker_reads == 2  # the third call started one more in the background
    await directory.close()


async def test_a_stale_estimate_never_refuses() -> None:
    # A burst filled the local estimate; its jobs have finished since. The next request must
    # not be refused on that estimate: past its TTL it is re-read before any 429.
    backend = CountingBackend()
    admission = control(backend, ttl=0, max_age=30)
    for _ in range(10):
        await admission.admit({LLM: 1})  # the estimate now counts 10 (the bound)
    backend.loads[("llm", "seed-x-i")] = 0  # ... all done
    await admission.admit({LLM: 1})  # admitted on a fresh read, not refused on the stale one
    await admission.close()


async def test_concurrent_fresh_reads_share_one_round_trip() -> None:
    backend = CountingBackend()
    admission = control(backend, ttl=5, max_age=30)
    backend.gate = asyncio.Event()
    waiting = [asyncio.create_task(admission.admit({LLM: 1})) for _ in range(8)]
    await settle()
    backend.gate.set()
    await asyncio.gather(*waiting)
    assert backend.load_reads == 1
    await admission.close()


async def test_a_stale_directory_never_answers_503() -> None:
    backend = CountingBackend()
    backend.serve("llm", "seed-x-i")
    directory = ModelDirectory(backend, ttl_s=0, max_age_s=60)
    await directory.require(LLM)
    backend.serve("diffusion", "first_stage")  # a worker that came up after the last read
    await directory.require(LLM, [StageModel("diffusion", "first_stage")])  # re-read, no 503
    await directory.close()
