"""Prometheus metrics of the diffusion worker (``seedx_diffusion_*``, STYLE.md §5).

Throughput is exported as counters (``images_total``, ``megapixels_total``): images/s and
megapixels/s are their ``rate()`` in Prometheus, which stays exact across scrapes. Labels are
bounded: ``reason`` comes from :data:`FAILURE_REASONS`, never a job id. The generic worker loop
already counts jobs by outcome (``seedx_worker_jobs_total{stage="diffusion"}``).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

FAILURE_REASONS: Final = (
    "invalid_request",
    "blob",
    "out_of_memory",
    "deadline_exceeded",
    "internal",
)

QUEUE_WAIT = Histogram(
    "seedx_diffusion_queue_wait_seconds",
    "Time from enqueue to the job's batch starting on the device (Redis + batching wait).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
STEP_SECONDS = Histogram(
    "seedx_diffusion_step_seconds",
    "Wall time of one denoising step of a batch (all its guidance rows in one UNet call).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
)
QUEUE_WAIT_STEPS = Histogram(
    "seedx_diffusion_queue_wait_steps",
    "Time from the worker taking a job to it joining a batch, in step times of the running "
    "batch (step-level batching: about 1; batch-level: up to a whole generation).",
    buckets=(0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 50, 100, 200),
)
UNET_ROWS = Histogram(
    "seedx_diffusion_unet_rows",
    "Rows (guidance branches of all running jobs) per UNet call.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192),
)
JOINS = Histogram(
    "seedx_diffusion_batch_joins",
    "Jobs that joined a batch after its first step (step-level batching), per batch.",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SIZE = Histogram(
    "seedx_diffusion_batch_size",
    "Images in a batch when its sampling starts (jobs joining later: batch_joins).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
BATCH_SECONDS = Histogram(
    "seedx_diffusion_batch_seconds",
    "Wall time of one batch: conditioning, sampling and VAE decode.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
JOB_SECONDS = Histogram(
    "seedx_diffusion_job_seconds",
    "Time from the worker accepting a job to its image being stored.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
)
IMAGES = Counter("seedx_diffusion_images_total", "Images produced (rate(): images/s).")
MEGAPIXELS = Counter(
    "seedx_diffusion_megapixels_total", "Output megapixels produced (rate(): megapixels/s)."
)
FAILURES = Counter("seedx_diffusion_failures_total", "Jobs that failed, by reason.", ["reason"])
DROPPED = Counter(
    "seedx_diffusion_dropped_jobs_total",
    "Jobs removed from a running batch because nobody waits for them any more.",
)
OOM_SPLITS = Counter(
    "seedx_diffusion_oom_splits_total", "Batches split in two after running out of memory."
)
WAITING = Gauge("seedx_diffusion_waiting_jobs", "Jobs held by this worker, waiting for a batch.")

for _reason in FAILURE_REASONS:
    FAILURES.labels(_reason)


def failure_reason(code: str) -> str:
    """The bounded ``reason`` label of a wire error code."""
    if code in ("blob_missing", "blob_corrupt"):
        return "blob"
    return code if code in FAILURE_REASONS else "internal"
