"""The producer side of the job streams: enqueue, cancel, idempotency, depth, trimming.

One stream per stage and model (``seedx:jobs:{stage}:{model}``) with one consumer group that all
workers of that stage and model share. The stream is bounded without ever dropping work:

- enqueue refuses with :class:`~workers.errors.Overloaded` once queued + running jobs reach
  ``max_queue_depth`` (admission control instead of ``MAXLEN``, which would delete jobs);
- :func:`trim_acknowledged` removes only entries older than both the group's oldest pending
  entry and its last-delivered id (``XTRIM MINID``), i.e. acknowledged history.

Jobs waiting = the group's ``lag``, but never more than the entries in the stream that are not
pending (``XLEN - pending``): ``lag`` is a counter (entries added minus entries the group read),
not a count, and after a Sentinel failover the new master's ``entries-read`` can be stale (Redis
7.0 seen here: lag 343 on an empty stream), which without the bound read as a full queue and
refused every request until a read that could not come (nothing was enqueued). The bound is
exact once acknowledged history is trimmed, and never below the true count.

Enqueue is one Lua script, so the depth check, the idempotency record and the ``XADD`` are
atomic. Every enqueue records an idempotency entry: the client's key for ``idempotency_ttl_s``,
or else the job id until shortly after the job's deadline, so when redis-py retries an enqueue
whose reply was lost the job is not queued twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from workers import keys
from workers.connection import unavailable_on_disconnect
from workers.errors import Overloaded
from workers.protocol import Job
from workers.settings import QueueSettings

logger = logging.getLogger(__name__)

JOB_FIELD = b"job"
_RETRY_DEDUPE_MARGIN_S = 60.0

# KEYS: stream, idempotency key, stream index. ARGV: group, payload, job_id, max_depth, ttl_ms.
# Returns {0, job_id} for a duplicate, {-1, depth} when full, {1, entry_id} when queued.
_ENQUEUE_LUA = """
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local depth = nil
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      local waiting = math.max(0, redis.call('XLEN', KEYS[1]) - info['pending'])
      local lag = info['lag']
      if lag and lag < waiting then waiting = lag end
      depth = waiting + info['pending']
    end
  end
end
if depth == nil then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  depth = redis.call('XLEN', KEYS[1])
end
local max_depth = tonumber(ARGV[4])
if max_depth > 0 and depth >= max_depth then return {-1, tostring(depth)} end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('SADD', KEYS[3], KEYS[1])
return {1, id}
"""


# KEYS: stream. ARGV: group. Sets the group's entries-read so that its lag counts the entries
# after its last-delivered id, when the counter says more than the stream holds (see
# repair_lag). Returns the corrected lag, or -1 when nothing needed repair.
_REPAIR_LAG_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local group = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[1] then group = info end
end
if group == nil or not group['lag'] then return -1 end
local holds = redis.call('XLEN', KEYS[1]) - group['pending']
if group['lag'] <= holds then return -1 end
local last = group['last-delivered-id']
local waiting = 0
if holds > 0 then waiting = #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', holds) end
local stream = redis.call('XINFO', 'STREAM', KEYS[1])
local added = nil
for i = 1, #stream, 2 do
  if stream[i] == 'entries-added' then added = stream[i + 1] end
end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', added - waiting)
return waiting
"""


StreamEntry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(response: Any) -> list[StreamEntry]:
    """The entries of an XREAD/XREADGROUP reply, in order (RESP2 list or RESP3 map)."""
    if not response:
        return []
    per_stream = response.values() if isinstance(response, dict) else (e for _, e in response)
    return [(entry_id, fields or {}) for entries in per_stream for entry_id, fields in entries]


def parse_entry_id(entry_id: bytes | str) -> tuple[int, int]:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``, comparable."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def next_entry_id(entry_id: bytes | str) -> str:
    """The smallest id greater than ``entry_id``."""
    ms, seq = parse_entry_id(entry_id)
    return f"{ms}-{seq + 1}"


@dataclass(frozen=True)
class EnqueueResult:
    """Where a job went. ``duplicate``: the idempotency key already named another job."""

    job_id: str
    entry_id: str | None
    duplicate: bool


@dataclass(frozen=True)
class QueueStats:
    """Depth and lag of one job stream, for metrics, autoscaling and admission control."""

    stream: str
    queued: int
    """Jobs not yet delivered to any worker."""
    running: int
    """Jobs delivered and not yet acknowledged (running, or on a worker that died)."""
    length: int
    """Entries in the stream, acknowledged history not yet trimmed included."""
    consumers: int
    oldest_queued_age_s: float
    """How long the job at the head of the queue has waited (0 when nothing is queued)."""


@dataclass(frozen=True)
class DeadLetter:
    """A job set aside after too many deliveries (or because it could not be decoded)."""

    stream: str
    entry_id: str
    deliveries: int
    reason: str
    job: bytes
    dead_at: float

    def to_fields(self) -> dict[bytes, bytes | str | int | float]:
        """The stream entry fields of this dead letter."""
        return {
            b"stream": self.stream,
            b"entry_id": self.entry_id,
            b"deliveries": self.deliveries,
            b"reason": self.reason,
            b"job": self.job,
            b"dead_at": self.dead_at,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> DeadLetter:
        """Rebuild a dead letter from its stream entry."""
        return cls(
            stream=fields[b"stream"].decode(),
            entry_id=fields[b"entry_id"].decode(),
            deliveries=int(fields[b"deliveries"]),
            reason=fields[b"reason"].decode(),
            job=fields[b"job"],
            dead_at=float(fields[b"dead_at"]),
        )


class JobQueue:
    """Enqueue and cancel jobs, and read queue depth; what the gateway uses to submit work."""

    def __init__(self, redis: Redis, settings: QueueSettings) -> None:
        self._redis = redis
        self._settings = settings
        self._enqueue_script = redis.register_script(_ENQUEUE_LUA)

    async def enqueue(self, job: Job) -> EnqueueResult:
        """Append ``job`` to its stage's stream; Overloaded when full, Unavailable when down.

        With an ``idempotency_key`` seen within ``idempotency_ttl_s`` nothing is queued and the
        earlier job's id is returned with ``duplicate=True``.
        """
        if job.idempotency_key:
            dedupe_key = keys.idempotency_key(job.idempotency_key)
            ttl_s = self._settings.idempotency_ttl_s
        else:  # only guards retries of this very enqueue: keep it until the job is moot
            dedupe_key = keys.job_idempotency_key(job.job_id)
            ttl_s = max(0.0, job.deadline - time.time()) + _RETRY_DEDUPE_MARGIN_S
        args: list[str | int] = [
            keys.WORKER_GROUP,
            job.model_dump_json(),
            job.job_id,
            self._settings.max_queue_depth,
            max(1, int(ttl_s * 1000)),
        ]
        async with unavailable_on_disconnect("enqueueing a job"):
            status, value = await self._enqueue_script(
                keys=[job.stream, dedupe_key, keys.JOB_STREAM_INDEX], args=args
            )
        text = value.decode() if isinstance(value, bytes) else str(value)
        if status == -1:
            raise Overloaded(f"the {job.stage} queue for {job.model} is full ({text} jobs)")
        if status == 0:
            return EnqueueResult(job_id=text, entry_id=None, duplicate=text != job.job_id)
        logger.debug("enqueued job %s to %s as %s", job.job_id, job.stream, text)
        return EnqueueResult(job_id=job.job_id, entry_id=text, duplicate=False)

    async def cancel(self, job_id: str) -> None:
        """Flag ``job_id`` as cancelled: a queued job never runs, a running one stops at its
        next step and ends with ``Failed(code="cancelled")``."""
        async with unavailable_on_disconnect("cancelling a job"):
            await self._redis.set(
                keys.cancel_key(job_id), b"1", px=int(self._settings.cancel_ttl_s * 1000)
            )

    async def streams(self) -> list[str]:
        """Every job stream that has been enqueued to (for metrics)."""
        async with unavailable_on_disconnect("listing queues"):
            members: set[Any] = await self._redis.smembers(keys.JOB_STREAM_INDEX)
        return sorted(member.decode() for member in members)

    async def stats(self, stream: str) -> QueueStats:
        """Depth and lag of ``stream`` (all zeros for a stream that does not exist yet)."""
        async with unavailable_on_disconnect("reading queue depth"):
            return await self._stats(stream)

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        async with unavailable_on_disconnect("reading dead letters"):
            entries: Any = await self._redis.xrevrange(keys.DEAD_LETTER_STREAM, count=count)
        return [DeadLetter.from_fields(fields) for _id, fields in entries]

    async def _stats(self, stream: str) -> QueueStats:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.time()
        pipe.xinfo_groups(stream)
        length, (now_s, now_us), groups = await pipe.execute(raise_on_error=False)
        group = _find_group(groups)
        if group is None:
            return QueueStats(stream, length, 0, length, 0, 0.0)
        last = group["last-delivered-id"]
        head: Any = await self._redis.xrange(stream, min=b"(" + last, max=b"+", count=1)
        queued = group["lag"]
        if queued is None:  # not computable after deletions: count (bounded) instead
            bound = self._settings.max_queue_depth or 100_000
            rest: Any = await self._redis.xrange(stream, min=b"(" + last, count=bound)
            queued = len(rest)
        queued = min(queued, max(0, length - group["pending"]))  # see the module docstring
        age_s = 0.0
        if head:
            now_ms = now_s * 1000 + now_us // 1000
            age_s = max(0.0, (now_ms - parse_entry_id(head[0][0])[0]) / 1000)
        return QueueStats(stream, queued, group["pending"], length, group["consumers"], age_s)


def _find_group(groups: Any) -> dict[str, Any] | None:
    if isinstance(groups, Exception):  # the stream does not exist
        return None
    for group in groups:
        if group["name"] == keys.WORKER_GROUP.encode():
            found: dict[str, Any] = group
            return found
    return None


async def ensure_group(redis: Redis, stream: str) -> None:
    """Create the worker group at id 0 (so jobs queued before any worker are delivered)."""
    try:
        await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def trim_acknowledged(redis: Redis, stream: str, *, approximate: bool = True) -> int:
    """Delete acknowledged history only; returns how many entries went (a stale lag counter
    is repaired first: :func:`repair_lag`).

    The cut is the oldest pending entry, or the successor of the last delivered id when
    nothing is pending: everything older has been acknowledged. Both values only grow, so a
    cut computed from slightly stale reads is still safe.
    """
    await repair_lag(redis, stream)
    groups = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
    group = _find_group(groups)
    if group is None or group["last-delivered-id"] == b"0-0":
        return 0
    pending = await redis.xpending(stream, keys.WORKER_GROUP)
    cut = pending["min"] if pending["pending"] else next_entry_id(group["last-delivered-id"])
    trimmed: int = await redis.xtrim(stream, minid=cut, approximate=approximate)
    if trimmed:
        logger.debug("trimmed %d acknowledged entries from %s", trimmed, stream)
    return trimmed


async def repair_lag(redis: Redis, stream: str) -> int | None:
    """Correct the worker group's ``lag`` when it counts more entries than the stream holds;
    returns the corrected lag, or None when it was right.

    ``lag`` is entries added minus the group's ``entries-read``; a new master after a Sentinel
    failover may carry a stale ``entries-read`` (Redis 7.0 seen here: lag 343 on an empty
    stream), and since adds and reads then move both sides alike, the error never goes away
    on its own. Admission and the gateway's queue figures bound it already (the module
    docstring); this fixes the counter itself, which KEDA's ``lagCount`` trigger reads, so a
    stage is not held at its maximum replicas by jobs that do not exist. One script: the
    count and the ``XGROUP SETID ... ENTRIESREAD`` see the same stream. Run by the workers'
    periodic trim; a refusal (an ACL without ``+xgroup|setid``) is logged, not raised.
    """
    script = redis.register_script(_REPAIR_LAG_LUA)
    try:
        fixed = int(await script(keys=[stream], args=[keys.WORKER_GROUP]))
    except ResponseError as exc:  # an ACL from before +xgroup|setid: warn, never stop the worker
        logger.warning(
            "cannot repair the stale lag counter of %s (%s); admission is not affected, KEDA's "
            "lagCount over-counts: docs/deploy.md lists the ACL the stack needs",
            stream,
            exc,
        )
        return None
    if fixed < 0:
        return None
    logger.warning("the lag counter of %s was stale (a failover?); repaired to %d", stream, fixed)
    return fixed
