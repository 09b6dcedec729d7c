"""Prometheus metrics of the worker side of the transport (``seedx_<component>_<thing>_<unit>``).

Labels are bounded: ``stage`` (llm|diffusion) and ``outcome`` (a fixed set below); never a job id.
The worker process exposes them on its ``/metrics``; queue depth is read from Redis by whoever
exports it (:meth:`workers.queue.JobQueue.stats`), since no single worker owns a queue.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

Outcome = Literal[
    "done",
    "failed",
    "cancelled",
    "deadline_exceeded",
    "dead_lettered",
    "rejected",
    "abandoned",
    "lost",
]

JOBS = Counter(
    "seedx_worker_jobs_total",
    "Jobs a worker finished, by how they ended.",
    ["stage", "outcome"],
)
RECLAIMED = Counter(
    "seedx_worker_reclaimed_jobs_total",
    "Jobs taken over from a worker that stopped heartbeating.",
    ["stage"],
)
RUNNING = Gauge("seedx_worker_running_jobs", "Jobs this worker is running now.", ["stage"])
QUEUE_WAIT = Histogram(
    "seedx_queue_wait_seconds",
    "Time from enqueue to a worker starting the job.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOB_SECONDS = Histogram(
    "seedx_worker_job_seconds",
    "Time a worker spent on one job attempt, start to terminal event.",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
