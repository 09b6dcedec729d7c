"""Prometheus metrics of the LLM worker (``seedx_llm_<thing>_<unit>``, label ``model`` only).

What the generic loop already records is not repeated here: queue wait is
``seedx_queue_wait_seconds{stage="llm"}``, job outcomes ``seedx_worker_jobs_total``, jobs held
``seedx_worker_running_jobs`` and job time ``seedx_worker_job_seconds`` (``workers.metrics``).
This module adds what only the LLM side sees:

- time to first token, from the job's start on this worker (blob reads and prompt building
  included, queue wait excluded) to its first sampled token, and the inter-token latency between
  sampled tokens of one vLLM request (an image block, which is prefilled rather than sampled,
  is a request boundary, so its prefill shows in neither);
- prompt and generation tokens as billed (``Usage``: forced image tokens count as generated),
  visual embeddings emitted, invalid jobs and engine errors;
- requests running and waiting inside vLLM's scheduler, fed by :class:`SchedulerStatsLogger`
  (a vLLM stat logger, so the numbers are the scheduler's, not our guess). vLLM's own
  ``vllm:*`` metrics land in the same registry and are exported beside these.

The worker process serves the default registry with :func:`start_metrics_server`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

TTFT = Histogram(
    "seedx_llm_time_to_first_token_seconds",
    "Time from a job's start on the worker to its first sampled token.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80),
)
ITL = Histogram(
    "seedx_llm_inter_token_latency_seconds",
    "Time between two sampled tokens of one vLLM request.",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5),
)
PROMPT_TOKENS = Counter(
    "seedx_llm_prompt_tokens_total",
    "Prompt tokens of finished jobs (image blocks included).",
    ["model"],
)
GENERATION_TOKENS = Counter(
    "seedx_llm_generation_tokens_total",
    "Generated tokens of finished jobs (forced image tokens included, as billed).",
    ["model"],
)
IMAGES = Counter(
    "seedx_llm_generated_images_total", "Visual embeddings emitted (EmbeddingReady).", ["model"]
)
INVALID = Counter(
    "seedx_llm_invalid_requests_total",
    "Jobs refused as invalid_request before any engine work.",
    ["model"],
)
ENGINE_ERRORS = Counter(
    "seedx_llm_engine_errors_total",
    "Generations the engine failed with an unexpected error.",
    ["model"],
)
RUNNING = Gauge("seedx_llm_requests_running", "vLLM requests being scheduled now.", ["model"])
WAITING = Gauge("seedx_llm_requests_waiting", "vLLM requests waiting for a batch slot.", ["model"])


@dataclass
class GenerationTiming:
    """Token clock of one job: TTFT once, then ITL per sampled token (``on_tokens``)."""

    ttft: Any
    itl: Any
    started: float = field(default_factory=time.monotonic)
    first_seen: bool = False
    last: dict[str, float] = field(default_factory=dict)

    def on_tokens(self, request_id: str, count: int) -> None:
        """``count`` tokens of vLLM request ``request_id`` arrived now."""
        if count <= 0:
            return
        now = time.monotonic()
        if not self.first_seen:
            self.first_seen = True
            self.ttft.observe(now - self.started)
        previous = self.last.get(request_id)
        if previous is not None:
            gap = (now - previous) / count  # a delta carrying k tokens: k gaps of equal share
            for _ in range(count):
                self.itl.observe(gap)
        self.last[request_id] = now


class LLMMetrics:
    """The metrics above, bound to the served ``model`` label."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._ttft = TTFT.labels(model)
        self._itl = ITL.labels(model)
        self._prompt = PROMPT_TOKENS.labels(model)
        self._generation = GENERATION_TOKENS.labels(model)
        self._images = IMAGES.labels(model)
        self._invalid = INVALID.labels(model)
        self._errors = ENGINE_ERRORS.labels(model)

    def timing(self) -> GenerationTiming:
        """A fresh token clock, started now (call it when the job starts)."""
        return GenerationTiming(self._ttft, self._itl)

    def usage(self, prompt_tokens: int, generation_tokens: int) -> None:
        """Record a finished job's token counts."""
        self._prompt.inc(prompt_tokens)
        self._generation.inc(generation_tokens)

    def image_emitted(self) -> None:
        """One visual embedding was stored and announced."""
        self._images.inc()

    def invalid_request(self) -> None:
        """A job was refused before engine work (the client's fault)."""
        self._invalid.inc()

    def engine_error(self) -> None:
        """The engine raised during a generation (our fault)."""
        self._errors.inc()


class SchedulerStatsLogger:
    """A vLLM stat logger (``AsyncLLM(stat_loggers=[...])``) copying running/waiting counts.

    vLLM calls :meth:`record` in the frontend process after each engine step with its
    ``SchedulerStats``; only ``num_running_reqs`` and ``num_waiting_reqs`` are read, the two
    fields vLLM's own Prometheus logger exports, so a vLLM upgrade is unlikely to move them.
    """

    def __init__(self, model: str, vllm_config: Any = None, engine_index: int = 0) -> None:
        self._running = RUNNING.labels(model)
        self._waiting = WAITING.labels(model)

    @classmethod
    def factory(cls, model: str) -> Callable[[Any, int], SchedulerStatsLogger]:
        """The ``StatLoggerFactory`` vLLM calls with ``(vllm_config, engine_index)``."""

        def build(vllm_config: Any, engine_index: int = 0) -> SchedulerStatsLogger:
            return cls(model, vllm_config, engine_index)

        return build

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        """Copy the scheduler's queue sizes (called by vLLM after every step)."""
        if scheduler_stats is None:
            return
        self._running.set(scheduler_stats.num_running_reqs)
        self._waiting.set(scheduler_stats.num_waiting_reqs)

    def log_engine_initialized(self) -> None:
        """Nothing to log: the metrics are scraped."""

    def log(self) -> None:
        """Nothing to log: the metrics are scraped."""

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        """Sleep mode is not used."""
