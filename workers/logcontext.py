"""``job_id`` and ``trace_id`` on every log line about a job, via a contextvar (STYLE.md §5).

The worker binds them around each job (every job runs in its own task, so the binding never leaks
to another job); the process entrypoint installs :class:`JobContextFilter` on its handler and puts
``%(job_id)s %(trace_id)s`` (or the JSON fields) in its format. Messages never format them by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_job: ContextVar[tuple[str, str] | None] = ContextVar("seedx_job", default=None)


@contextmanager
def bind_job(job_id: str, trace_id: str) -> Iterator[None]:
    """Attach ``job_id``/``trace_id`` to log records emitted inside the block."""
    token = _job.set((job_id, trace_id))
    try:
        yield
    finally:
        _job.reset(token)


@contextmanager
def bind_trace(trace_id: str) -> Iterator[None]:
    """Attach ``trace_id`` alone (the gateway: one request, before or across its jobs)."""
    with bind_job("-", trace_id):
        yield


class JobContextFilter(logging.Filter):
    """Adds ``record.job_id`` and ``record.trace_id`` ("-" outside a job) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _job.get()
        record.job_id, record.trace_id = bound if bound else ("-", "-")
        return True
