"""Fleet gauges on the gateway's ``/metrics``: live workers and queued work per stage and model.

No single worker owns a queue, and autoscalers and alerts want one place to read "how much work
waits for ``seed-x-i``" and "how many workers serve it". The gateway already reads both for
admission and readiness, so it exports them, refreshed at scrape time with a bounded wait (a
slow Redis must not make the scrape hang; the previous values stay and ``up`` stays 1).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from server.backend import Backend
from workers import keys
from workers.errors import TransportError

logger = logging.getLogger(__name__)

LIVE_WORKERS = Gauge(
    "seedx_fleet_live_workers", "Workers with a fresh heartbeat.", ["stage", "model"]
)
QUEUE_LOAD = Gauge(
    "seedx_fleet_queue_jobs",
    "Queued plus running jobs of a stage's stream (what KEDA-style autoscalers read).",
    ["stage", "model"],
)
REFRESH_FAILURES = Gauge(
    "seedx_fleet_refresh_failed", "1 when the last refresh of the fleet gauges failed."
)

REFRESH_TIMEOUT_S = 1.0
_seen: set[tuple[keys.Stage, str]] = set()


async def refresh(backend: Backend, timeout_s: float = REFRESH_TIMEOUT_S) -> None:
    """Re-read live workers and the load of every stream they serve; bounded by ``timeout_s``."""
    try:
        await asyncio.wait_for(_refresh(backend), timeout_s)
    except (TransportError, asyncio.TimeoutError) as exc:
        logger.warning("fleet gauges not refreshed: %s", exc)
        REFRESH_FAILURES.set(1)
        return
    REFRESH_FAILURES.set(0)


async def _refresh(backend: Backend) -> None:
    workers = await backend.live_workers()
    counts: dict[tuple[keys.Stage, str], int] = {}
    for worker in workers:
        key = (worker.stage, worker.model)
        counts[key] = counts.get(key, 0) + 1
    # A stream whose last worker went away stays exported, at 0 live workers.
    for seen in _seen:
        counts.setdefault(seen, 0)
    _seen.update(counts)
    loads = await asyncio.gather(*(backend.queue_load(s, m) for s, m in counts))
    for (stage, model), live, load in zip(counts, counts.values(), loads, strict=True):
        LIVE_WORKERS.labels(stage, model).set(live)
        QUEUE_LOAD.labels(stage, model).set(load)
