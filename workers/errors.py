"""Errors of the job transport, each carrying its wire code, HTTP status and OpenAI error type.

Per STYLE.md §4 every error is one subclass with ``code``, ``http_status`` and ``type`` as class
attributes, so the gateway maps them in one place and nothing else picks status codes. The same
codes travel inside ``Failed`` events (:class:`workers.protocol.ErrorPayload`);
:func:`error_for_code` turns a received payload back into the matching exception class.

These live in ``workers`` (not ``engine``) because the gateway imports them and must not import
the model package.
"""

from __future__ import annotations

from typing import ClassVar

INTERNAL_ERROR = "internal_error"


class TransportError(Exception):
    """Base of every transport error: a message plus the wire/HTTP classification."""

    code: ClassVar[str] = INTERNAL_ERROR
    http_status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class Unavailable(TransportError):
    """Redis (or the reply path) cannot be reached after bounded retries; try again later."""

    code = "unavailable"
    http_status = 503
    retryable = True


class StoreFull(Unavailable):
    """Redis refused a write because it is at ``maxmemory`` (``maxmemory-policy noeviction``
    answers ``-OOM``): the job store is full.

    503 with ``Retry-After``, not 429: 429 tells one client that *it* is over its rate and should
    slow down; here the server as a whole is temporarily unable to accept work from anyone (it
    frees itself as blobs expire and requests end), which is what 503 means. Raised before any
    work starts at admission (the gateway's enqueue or input-image store), and, after retries
    with backoff until the job's deadline, by a worker whose blob or event write keeps hitting
    it.
    """

    code = "store_full"


class Overloaded(TransportError):
    """The job queue is at its configured depth; refuse instead of queueing unbounded work."""

    code = "overloaded"
    http_status = 429
    type = "rate_limit_error"
    retryable = True


class InvalidRequest(TransportError):
    """The request cannot be served as given (unreadable image, prompt too long, bad option).

    ``param`` names the offending field, as OpenAI's error body does. A worker answers it for a
    job the gateway could not check without the model (tokenized length, decoded pixels); the
    gateway raises it (or a subclass) for everything it can check itself.
    """

    code = "invalid_request"
    http_status = 400
    type = "invalid_request_error"


class ModelNotFound(TransportError):
    """No worker serves the model the request names.

    Shared by the gateway (no live worker heartbeats for the model) and the workers (a job that
    reached a process serving another model), so both answer the same 404. A model that exists
    but cannot run the asked task is an :class:`InvalidRequest` naming ``task``.
    """

    code = "model_not_found"
    http_status = 404
    type = "invalid_request_error"


class DeadlineExceeded(TransportError):
    """The job's deadline passed before it finished (or before it started)."""

    code = "deadline_exceeded"
    http_status = 504


class WorkerFailed(TransportError):
    """A worker reported a failure the gateway cannot attribute to the request."""

    code = "worker_failed"
    http_status = 502


class UnsupportedSchema(WorkerFailed):
    """A message carried a ``schema_version`` this process does not speak (rollout skew)."""

    code = "unsupported_schema"


class DuplicateJob(TransportError):
    """The idempotency key already names another job (``job_id``) within its TTL."""

    code = "duplicate_request"
    http_status = 409
    type = "invalid_request_error"

    def __init__(self, message: str, *, job_id: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.job_id = job_id


class InvalidMessage(WorkerFailed):
    """A message could not be decoded or failed validation; a bug in the sender, not the user."""

    code = "invalid_message"


class DeadLettered(WorkerFailed):
    """The job was delivered too many times (it keeps killing workers) and was set aside."""

    code = "dead_lettered"


class Cancelled(TransportError):
    """The job was cancelled by its requester.

    499 is nginx's "client closed request": nobody normally reads this status, but it keeps a
    cancellation out of the 5xx error-rate metrics.
    """

    code = "cancelled"
    http_status = 499
    type = "invalid_request_error"


class BlobMissing(TransportError):
    """A referenced blob does not exist (expired, released, or never written)."""

    code = "blob_missing"


class BlobCorrupt(TransportError):
    """A blob's bytes do not match its recorded size or checksum."""

    code = "blob_corrupt"


class OutOfMemory(TransportError):
    """The job did not fit in device memory even alone (workers split batches before this).

    503, not 400: the request is valid and a larger or idler device would run it.
    """

    code = "out_of_memory"
    http_status = 503


WIRE_ERRORS: tuple[type[TransportError], ...] = (
    InvalidRequest,
    ModelNotFound,
    Unavailable,
    StoreFull,
    Overloaded,
    DeadlineExceeded,
    WorkerFailed,
    UnsupportedSchema,
    InvalidMessage,
    DeadLettered,
    Cancelled,
    BlobMissing,
    BlobCorrupt,
    OutOfMemory,
)
"""The errors that travel in ``Failed`` events, by code (add new wire errors here)."""

_BY_CODE: dict[str, type[TransportError]] = {cls.code: cls for cls in WIRE_ERRORS}


def error_for_code(code: str, message: str, *, param: str | None = None) -> TransportError:
    """Rebuild the exception for a wire ``code``; unknown codes become :class:`WorkerFailed`.

    A worker may report codes this gateway version does not know (a newer engine error); they
    still surface as a 502 with the worker's message rather than a crash.
    """
    return _BY_CODE.get(code, WorkerFailed)(message, param=param)
