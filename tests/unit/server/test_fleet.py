"""Fleet gauges: live workers, queued jobs and load per stage and model, refreshed at scrape
time (the load against a real Redis: tests/integration/gateway/test_queue_load.py)."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from server import fleet
from tests.unit.server.fakes import FakeBackend
from workers.errors import Unavailable


def _value(name: str, stage: str, model: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"stage": stage, "model": model})


async def test_refresh_counts_workers_and_load_and_keeps_gone_streams_at_zero() -> None:
    backend = FakeBackend(loads={("llm", "fleet-a"): 5})
    backend.serve("llm", "fleet-a")
    backend.serve("llm", "fleet-a")
    backend.serve("diffusion", "fleet-b")
    await fleet.refresh(backend)
    assert _value("seedx_fleet_live_workers", "llm", "fleet-a") == 2
    assert _value("seedx_fleet_queue_jobs", "llm", "fleet-a") == 5
    assert _value("seedx_fleet_capacity_jobs", "llm", "fleet-a") == 8  # 2 heartbeats of 4
    assert _value("seedx_queue_load", "llm", "fleet-a") == 5 / 8
    assert _value("seedx_fleet_live_workers", "diffusion", "fleet-b") == 1
    backend.workers = [w for w in backend.workers if w.model != "fleet-b"]
    backend.loads[("diffusion", "fleet-b")] = 3
    await fleet.refresh(backend)
    assert _value("seedx_fleet_live_workers", "diffusion", "fleet-b") == 0  # scale-to-zero signal
    assert _value("seedx_fleet_queue_jobs", "diffusion", "fleet-b") == 3
    assert _value("seedx_queue_load", "diffusion", "fleet-b") == 3  # the job count, no worker


class _Down(FakeBackend):
    async def live_workers(self) -> list:  # type: ignore[type-arg]
        raise Unavailable("redis is down")


class _Slow(FakeBackend):
    async def live_workers(self) -> list:  # type: ignore[type-arg]
        await asyncio.sleep(10)
        return []


async def test_refresh_never_fails_or_hangs_the_scrape() -> None:
    await fleet.refresh(_Down())
    assert REGISTRY.get_sample_value("seedx_fleet_refresh_failed") == 1
    started = asyncio.get_running_loop().time()
    await fleet.refresh(_Slow(), timeout_s=0.05)
    assert asyncio.get_running_loop().time() - started < 1
    await fleet.refresh(FakeBackend())
    assert REGISTRY.get_sample_value("seedx_fleet_refresh_failed") == 0
