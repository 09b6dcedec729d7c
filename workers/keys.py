"""Every Redis key, stream and group name the transport uses, and their default TTLs.

One module, like arq's ``constants.py``: a reviewer can see the whole Redis footprint of the
service here, and an operator can find which keys to inspect with ``redis-cli``. The TTLs are
defaults; the live values come from :class:`workers.settings.QueueSettings` so tests can shrink
them without touching module globals.

All names share the ``seedx:`` prefix so a shared Redis can be audited (``SCAN MATCH seedx:*``).
"""

from __future__ import annotations

from typing import Literal, get_args

PREFIX = "seedx"

Stage = Literal["llm", "diffusion"]
STAGES: tuple[Stage, ...] = get_args(Stage)

# --- streams -------------------------------------------------------------------------------
JOB_STREAM_PREFIX = f"{PREFIX}:jobs:"
"""``seedx:jobs:{stage}:{model}``: the work queue of one stage and model (consumer group)."""

WORKER_GROUP = "workers"
"""The one consumer group on every job stream: all workers of a stage+model share the work."""

REPLY_STREAM_PREFIX = f"{PREFIX}:replies:"
"""``seedx:replies:{replica}``: events for one gateway replica, read by its single reader task."""

DEAD_LETTER_STREAM = f"{PREFIX}:dead"
"""Jobs that exhausted their deliveries (or could not be decoded), kept for operators."""

JOB_STREAM_INDEX = f"{PREFIX}:streams"
"""SET of every job stream ever enqueued to, so metrics can list queues without SCAN."""

# --- keys ----------------------------------------------------------------------------------
WORKER_PREFIX = f"{PREFIX}:worker:"
"""``seedx:worker:{worker_id}``: a worker heartbeat (JSON WorkerInfo, expires with the lease)."""

WORKER_INDEX = f"{PREFIX}:workers"
"""ZSET worker_id -> last heartbeat (epoch s); members whose heartbeat key expired are pruned."""

BLOB_PREFIX = f"{PREFIX}:blob:"
"""``seedx:blob:{id}``: one binary blob (image bytes, raw tensor bytes) with a TTL."""

BLOB_OWNER_PREFIX = f"{PREFIX}:blobs:"
"""``seedx:blobs:{request_id}``: SET of the blob keys a request owns, deleted when it completes."""

CANCEL_PREFIX = f"{PREFIX}:cancel:"
"""``seedx:cancel:{job_id}``: present when the job was cancelled; workers poll it."""

IDEMPOTENCY_PREFIX = f"{PREFIX}:idem:"
"""``seedx:idem:{key}``: idempotency key -> job_id, so a retried enqueue is not a second job."""

REQUEST_RECORD_PREFIX = f"{PREFIX}:request:"
"""``seedx:request:{digest}``: the HTTP request an ``Idempotency-Key`` names (its fingerprint and
attempt), and ``seedx:request:{digest}:{attempt}``, the stream of that attempt's answer (status,
headers, body chunks) that the first client and every retry read (gateway only:
``server.idempotency``). The digest hashes the API key's hash and the key: no client text in
key names."""

RESPONSE_PREFIX = f"{PREFIX}:response:"
"""``seedx:response:{id}``: a stored Responses API object and its conversation (gateway only)."""

# --- default TTLs and bounds (seconds unless named otherwise) --------------------------------
DEFAULT_LEASE_S = 30.0
"""A job whose worker has not heartbeated for this long is reclaimed by another worker."""

DEFAULT_BLOB_TTL_S = 3600.0
DEFAULT_CANCEL_TTL_S = 3600.0
DEFAULT_IDEMPOTENCY_TTL_S = 24 * 3600.0
DEFAULT_REPLY_STREAM_TTL_S = 24 * 3600.0
"""A reply stream whose gateway replica is gone expires after this long without its reader."""

DEFAULT_REPLY_STREAM_MAXLEN = 100_000
"""Safety cap for a reply stream whose reader died; a live reader trims far below it."""

DEFAULT_DEAD_LETTER_MAXLEN = 10_000


def job_stream(stage: Stage, model: str) -> str:
    """The job stream of ``stage`` for ``model``."""
    return f"{JOB_STREAM_PREFIX}{stage}:{model}"


def reply_stream(replica_id: str) -> str:
    """The reply stream of one gateway replica."""
    return f"{REPLY_STREAM_PREFIX}{replica_id}"


def worker_key(worker_id: str) -> str:
    """The heartbeat key of one worker process."""
    return f"{WORKER_PREFIX}{worker_id}"


def blob_key(blob_id: str) -> str:
    """The key of one blob."""
    return f"{BLOB_PREFIX}{blob_id}"


def blob_owner_key(request_id: str) -> str:
    """The set of blob keys owned by one request."""
    return f"{BLOB_OWNER_PREFIX}{request_id}"


def cancel_key(job_id: str) -> str:
    """The cancellation flag of one job."""
    return f"{CANCEL_PREFIX}{job_id}"


def idempotency_key(key: str) -> str:
    """The idempotency record of a client-chosen key."""
    return f"{IDEMPOTENCY_PREFIX}{key}"


def job_idempotency_key(job_id: str) -> str:
    """The implicit idempotency record of a job id (makes a retried enqueue harmless)."""
    return f"{IDEMPOTENCY_PREFIX}job:{job_id}"


def request_record_key(digest: str) -> str:
    """The record of one ``Idempotency-Key`` of one API key (``digest`` hashes both)."""
    return f"{REQUEST_RECORD_PREFIX}{digest}"


def request_answer_stream(digest: str, attempt: str) -> str:
    """The answer stream of one attempt at the request ``digest`` names."""
    return f"{REQUEST_RECORD_PREFIX}{digest}:{attempt}"


def response_key(response_id: str) -> str:
    """A stored Responses API object (``server.responses.store``)."""
    return f"{RESPONSE_PREFIX}{response_id}"
