"""Fleet gauges on the gateway's ``/metrics``: live workers, queued work, load per stage and model.

No single worker owns a queue, and autoscalers and alerts want one place to read "how much work
waits for ``seed-x-i``" and "how many workers serve it". The gateway already reads both for
admission and readiness, so it exports them, refreshed at scrape time with a bounded wait (a
slow Redis must not make the scrape hang; the previous values stay and ``up`` stays 1).

``seedx_queue_load`` is the one figure an autoscaler needs (KEDA's Prometheus trigger in the
chart, or an HPA on an external metric): see :func:`queue_load` for why it counts what it counts.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from server.backend import Backend
from workers import keys
from workers.errors import TransportError
from workers.transport import QueueStats

logger = logging.getLogger(__name__)

LIVE_WORKERS = Gauge(
    "seedx_fleet_live_workers", "Workers with a fresh heartbeat.", ["stage", "model"]
)
CAPACITY = Gauge(
    "seedx_fleet_capacity_jobs",
    "Jobs the live workers take at once, summed (each heartbeat's capacity).",
    ["stage", "model"],
)
QUEUE_JOBS = Gauge(
    "seedx_fleet_queue_jobs",
    "Queued plus running jobs of a stage's stream (the numerator of seedx_queue_load).",
    ["stage", "model"],
)
JOBS = Gauge(
    "seedx_fleet_jobs",
    "Jobs of a stage's stream by state: queued (not yet delivered to a worker) or running "
    "(delivered and not yet acknowledged, on a live worker or on one that died).",
    ["stage", "model", "state"],
)
QUEUE_LOAD = Gauge(
    "seedx_queue_load",
    "(queued + running jobs) / capacity of the live workers; the job count when no worker is "
    "live. 1 means every worker holds all it can take and nothing waits.",
    ["stage", "model"],
)
REFRESH_FAILURES = Gauge(
    "seedx_fleet_refresh_failed", "1 when the last refresh of the fleet gauges failed."
)

REFRESH_TIMEOUT_S = 1.0
_seen: set[tuple[keys.Stage, str]] = set()


def queue_load(stats: QueueStats, capacity: int) -> float:
    """How loaded a stage is: ``(queued + running) / capacity``, or ``queued + running`` when
    ``capacity`` is 0.

    - Running jobs count: a worker takes up to its capacity from the stream at once, so when the
      stage is busy most of its work is delivered-but-unacknowledged, not queued. Stream lag
      alone reads 0 while every worker is full, and an autoscaler on lag scales in (or to zero)
      a stage that is working flat out. Jobs held by a worker that died count too: they are
      reclaimed after their lease and still have to run.
    - Acknowledged history (entries kept until trimmed) does not count: ``stats.length`` is not
      used.
    - Dividing by capacity, the sum of the live workers' heartbeat ``capacity`` (LLM: jobs run
      at once; diffusion: jobs held, ``held_jobs``), makes the figure a utilisation: 1 is "every
      worker holds all it can take and nothing waits", above 1 jobs wait. Summing heartbeats,
      rather than multiplying a worker count by one configured value, stays right while a
      rollout mixes old and new capacities. For an HPA ``Value`` target T the replica count it
      asks for, ``ready pods x load / T``, is then ``jobs / (capacity per worker x T)``.
    - No live worker: the ratio is undefined, and 0 would hide the work that must wake a stage
      scaled to zero (infinity breaks the HPA's arithmetic). The job count is reported instead:
      greater than 0 exactly when work waits, so a KEDA activation threshold of 0 wakes the stage,
      and ``seedx_fleet_live_workers`` tells this case apart.
    """
    jobs = stats.queued + stats.running
    return jobs / capacity if capacity > 0 else float(jobs)


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
    live: dict[tuple[keys.Stage, str], int] = {}
    capacity: dict[tuple[keys.Stage, str], int] = {}
    for worker in workers:
        key = (worker.stage, worker.model)
        live[key] = live.get(key, 0) + 1
        capacity[key] = capacity.get(key, 0) + worker.capacity
    # A stream whose last worker went away stays exported, at 0 live workers.
    for seen in _seen:
        live.setdefault(seen, 0)
    _seen.update(live)
    all_stats = await asyncio.gather(*(backend.queue_stats(s, m) for s, m in live))
    for (stage, model), stats in zip(live, all_stats, strict=True):
        held = capacity.get((stage, model), 0)
        LIVE_WORKERS.labels(stage, model).set(live[stage, model])
        CAPACITY.labels(stage, model).set(held)
        QUEUE_JOBS.labels(stage, model).set(stats.queued + stats.running)
        JOBS.labels(stage, model, "queued").set(stats.queued)
        JOBS.labels(stage, model, "running").set(stats.running)
        QUEUE_LOAD.labels(stage, model).set(queue_load(stats, held))
