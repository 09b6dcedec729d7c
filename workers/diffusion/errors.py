"""Errors of the diffusion worker that end one job (never the worker), each with its wire code.

They follow the shape ``workers.handler.failure_event`` understands (``code``, ``param``,
``retryable``); the handler turns them into ``Failed`` events. Client mistakes are
``invalid_request`` and name the offending wire parameter (STYLE.md §4).
"""

from __future__ import annotations

from typing import ClassVar

from workers import errors as wire_errors
from workers.errors import INTERNAL_ERROR


class DiffusionError(Exception):
    """A job-level failure with a wire ``code`` and, when one is to blame, the ``param``."""

    code: ClassVar[str] = INTERNAL_ERROR
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(DiffusionError):
    """The job's parameters or inputs are invalid; ``param`` names the wire field."""

    code = wire_errors.InvalidRequest.code


class OutOfMemory(DiffusionError):
    """Even alone, the job did not fit in device memory (batches are split before this)."""

    code = wire_errors.OutOfMemory.code


class InternalError(DiffusionError):
    """A fault of the worker itself (logged with its traceback where it happened)."""

    code = INTERNAL_ERROR
