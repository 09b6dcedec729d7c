"""The consumer side of one job stream: read, lease, reclaim, acknowledge, dead-letter.

Leases live on the stream entries themselves. A delivered entry sits in the group's pending list
with an idle time; while its job runs, the worker's heartbeat "touches" the entry (``XCLAIM`` to
itself with ``JUSTID``, which resets the idle time without counting a delivery). A worker that
stops heartbeating stops touching, its entries' idle time passes ``lease_s``, and any other worker's
``XAUTOCLAIM`` with that minimum idle time takes them over. So a long job whose worker is alive is
never stolen, however long it runs, and a job whose worker was SIGKILLed is retried after one
lease. The touch is a Lua script that only touches entries still owned by this consumer; entries
that are not are reported lost, and the worker drops that job's results.

Every reclaim counts a delivery; past ``max_deliveries`` the job goes to the dead-letter stream and
its requester gets a terminal ``Failed(code="dead_lettered")`` (a job that kills every worker that
runs it must not take the fleet down one worker at a time).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from workers import keys
from workers.errors import TransportError
from workers.protocol import ErrorPayload, Event, Failed, Started, encode
from workers.queue import JOB_FIELD, DeadLetter, ensure_group, stream_entries, trim_acknowledged
from workers.replies import REPLY_FIELD, ReplyWriter
from workers.settings import QueueSettings

logger = logging.getLogger(__name__)

# KEYS: stream. ARGV: group, consumer, idle_ms, entry ids...
# Sets the idle time of the entries this consumer still owns; returns the ids it does not own.
_TOUCH_LUA = """
local lost = {}
for i = 4, #ARGV do
  local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if ok and p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# KEYS: cancel flag, reply stream. ARGV: maxlen, field, encoded Started reply.
# Appends the Started reply unless the job was cancelled; returns 1 when appended.
_START_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One job as delivered to this worker: ``attempt`` is the entry's delivery count."""

    entry_id: str
    raw: bytes
    attempt: int


class StreamConsumer:
    """One worker's handle on one job stream (consumer name = worker id)."""

    def __init__(self, redis: Redis, settings: QueueSettings, stream: str, consumer: str) -> None:
        self.stream = stream
        self.consumer = consumer
        self._redis = redis
        self._settings = settings
        self._cursor = b"0-0"
        self._touch_script = redis.register_script(_TOUCH_LUA)
        self._start_script = redis.register_script(_START_LUA)

    async def ensure_group(self) -> None:
        """Create the consumer group if it does not exist (idempotent)."""
        await ensure_group(self._redis, self.stream)

    async def read(self, count: int, block_s: float | None) -> list[Delivery]:
        """New jobs (never delivered before), at most ``count``; waits up to ``block_s``."""
        block = None if block_s is None else max(1, int(block_s * 1000))
        try:
            response = await self._read(count, block)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("group missing on %s (redis lost its data?); recreating", self.stream)
            await self.ensure_group()
            response = await self._read(count, block)
        return [
            Delivery(_text(entry_id), fields.get(JOB_FIELD, b""), attempt=1)
            for entry_id, fields in stream_entries(response)
        ]

    async def _read(self, count: int, block: int | None) -> Any:
        return await self._redis.xreadgroup(
            keys.WORKER_GROUP, self.consumer, {self.stream: ">"}, count=count, block=block
        )

    async def claim_abandoned(self, count: int) -> list[Delivery]:
        """Take over at most ``count`` jobs whose worker stopped touching them for a lease."""
        try:
            next_cursor, claimed, deleted = await self._redis.xautoclaim(
                self.stream,
                keys.WORKER_GROUP,
                self.consumer,
                min_idle_time=int(self._settings.lease_s * 1000),
                start_id=self._cursor,
                count=count,
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        self._cursor = next_cursor
        if deleted:
            logger.warning(
                "%d abandoned jobs on %s were already deleted", len(deleted), self.stream
            )
        if not claimed:
            return []
        attempts = await self._delivery_counts([entry_id for entry_id, _ in claimed])
        logger.info("reclaimed %d abandoned jobs from %s", len(claimed), self.stream)
        return [
            Delivery(_text(entry_id), (fields or {}).get(JOB_FIELD, b""), attempts[i])
            for i, (entry_id, fields) in enumerate(claimed)
        ]

    async def _delivery_counts(self, entry_ids: list[bytes]) -> list[int]:
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(self.stream, keys.WORKER_GROUP, entry_id, entry_id, 1)
        rows = await pipe.execute()
        return [int(row[0]["times_delivered"]) if row else 1 for row in rows]

    async def touch(self, entry_ids: list[str]) -> set[str]:
        """Renew the lease of the running jobs; returns the ids no longer owned (reclaimed)."""
        return await self._set_idle(entry_ids, idle_ms=0)

    async def held(self, limit: int = 10_000) -> list[str]:
        """The entries this consumer was delivered and has not acknowledged (its pending list)."""
        try:
            rows = await self._redis.xpending_range(
                self.stream, keys.WORKER_GROUP, "-", "+", limit, consumername=self.consumer
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        return [_text(cast(bytes, row["message_id"])) for row in rows]

    async def release(self, entry_ids: list[str]) -> set[str]:
        """Make unfinished jobs reclaimable right away (a clean shutdown hands work over)."""
        return await self._set_idle(entry_ids, idle_ms=int(self._settings.lease_s * 1000) + 1)

    async def _set_idle(self, entry_ids: list[str], idle_ms: int) -> set[str]:
        if not entry_ids:
            return set()
        lost = await self._touch_script(
            keys=[self.stream], args=[keys.WORKER_GROUP, self.consumer, idle_ms, *entry_ids]
        )
        return {_text(entry_id) for entry_id in lost}

    async def finish(self, entry_id: str, writer: ReplyWriter, event: Event) -> None:
        """Send the terminal event and acknowledge the job in one transaction.

        Atomic so a crash cannot leave a job answered but unacknowledged (it would run again)
        or acknowledged but unanswered (its requester would wait for the deadline).
        """
        pipe = self._redis.pipeline(transaction=True)
        writer.emit_in(pipe, event)
        pipe.xack(self.stream, keys.WORKER_GROUP, entry_id)
        await pipe.execute()

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        error: TransportError,
        writer: ReplyWriter | None,
    ) -> None:
        """Set the job aside, tell its requester (when known), and acknowledge it, atomically."""
        letter = DeadLetter(
            stream=self.stream,
            entry_id=delivery.entry_id,
            deliveries=delivery.attempt,
            reason=reason,
            job=delivery.raw,
            dead_at=time.time(),
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            keys.DEAD_LETTER_STREAM,
            letter.to_fields(),  # type: ignore[arg-type]  # redis-py's field typing is narrow
            maxlen=self._settings.dead_letter_maxlen,
            approximate=True,
        )
        if writer is not None:
            writer.emit_in(pipe, Failed(error=ErrorPayload.from_error(error)))
        pipe.xack(self.stream, keys.WORKER_GROUP, delivery.entry_id)
        await pipe.execute()
        logger.warning(
            "dead-lettered job entry %s of %s: %s", delivery.entry_id, self.stream, reason
        )

    async def start(self, job_id: str, writer: ReplyWriter, started: Started) -> bool:
        """Send ``started`` unless the job was cancelled while queued; False if it was.

        One round trip for the check and the event: both lie on the path to the job's first
        token, which its requester is waiting for (issue 6's added TTFT).
        """
        payload = encode(writer.stamp(started))
        appended = await self._start_script(
            keys=[keys.cancel_key(job_id), writer.stream],
            args=[writer.maxlen, REPLY_FIELD, payload],
        )
        if not appended:
            writer.unstamp()
        return bool(appended)

    async def cancelled(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` have been cancelled."""
        if not job_ids:
            return set()
        flags = await self._redis.mget([keys.cancel_key(job_id) for job_id in job_ids])
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}

    async def trim(self) -> int:
        """Drop acknowledged history from the stream (never a pending or queued job)."""
        return await trim_acknowledged(self._redis, self.stream, approximate=False)

    async def prune_consumers(self, live: set[str]) -> None:
        """Delete group consumers of dead workers that own nothing (keeps XINFO readable).

        Only consumers with no pending entries, idle for two leases and not in ``live`` (the
        worker ids with a heartbeat) go: deleting a consumer would orphan its pending entries.
        """
        idle_ms = 2 * self._settings.lease_s * 1000
        for info in await self._redis.xinfo_consumers(self.stream, keys.WORKER_GROUP):
            name = _text(info["name"])
            if info["pending"] == 0 and info["idle"] > idle_ms and name not in live:
                await self._redis.xgroup_delconsumer(self.stream, keys.WORKER_GROUP, name)

    async def leave(self) -> None:
        """Delete this consumer from the group if it owns no pending entry."""
        for info in await self._redis.xinfo_consumers(self.stream, keys.WORKER_GROUP):
            if _text(info["name"]) == self.consumer and info["pending"] == 0:
                await self._redis.xgroup_delconsumer(self.stream, keys.WORKER_GROUP, self.consumer)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
