"""The Redis side of ``Idempotency-Key``: one record per key, one answer stream per attempt.

``seedx:request:{digest}`` holds the request a key names (its fingerprint) and the attempt that
answers it; ``seedx:request:{digest}:{attempt}`` is that attempt's HTTP answer as it was sent:
the status and headers, then each body chunk, then an end marker (``workers.keys``). Every client
of the key, the first included, reads its answer from that stream from the start, so a retry
gets byte for byte what the first client got, whether it arrives while the answer is still being
written (it catches up, then follows) or after.

Claiming is one ``SET NX GET``: the first request of a key creates the record and runs; every
later one gets the record back and follows its attempt. While the attempt runs the record lives
for one lease (``queue.lease_s``), renewed by its gateway: if that gateway dies, the key is free
again after a lease and a retry runs anew (its followers end with a 503 telling them to retry).
A finished attempt's record and stream live for ``idempotency_ttl_s``; an attempt that answered
an error status is forgotten at once (its stream stays for one lease, for followers reading it).

Followers read the stream with ``XREAD``. Those in the process that writes it (every first
client, and retries that reach the same replica) wait for its next append on an in-process event,
holding no connection; only a retry that reached another replica while the answer is still being
written waits in ``XREAD BLOCK`` (at most ``queue.block_s`` at a time, on the shared pool), and
checks after each empty wait that the claim is still held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from workers import keys
from workers.connection import unavailable_on_disconnect
from workers.errors import Unavailable
from workers.protocol import new_id
from workers.queue import stream_entries

START, BODY, END = b"start", b"body", b"end"
"""The field of an answer stream entry: the response start (JSON status and headers), a body
chunk (bytes), the end (``ok``, ``error``: an error status, or ``broken``: cut short)."""

# KEYS: record. ARGV: expected value, then (renew) lease_ms | (keep) new value, ttl_ms | (drop).
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_KEEP_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 0
"""
_DROP_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class AttemptLost(Unavailable):
    """The attempt being followed stopped without finishing (its gateway died)."""


@dataclass(frozen=True)
class Record:
    """What one key names: the request's fingerprint and the attempt answering it."""

    fingerprint: str
    attempt: str
    done: bool = False

    def dumps(self) -> bytes:
        return json.dumps([self.fingerprint, self.attempt, self.done]).encode()

    @classmethod
    def loads(cls, data: bytes | str) -> Record:
        fingerprint, attempt, done = json.loads(data)
        return cls(fingerprint, attempt, bool(done))


@dataclass(frozen=True)
class Entry:
    """One entry of an answer stream, as an ASGI message (or the end)."""

    message: dict[str, Any] | None  # None: the end
    end: str = ""


class RequestRecords:
    """Claims keys, writes attempts' answers, and reads them back (see the module docstring)."""

    def __init__(self, redis: Redis, *, ttl_s: float, lease_s: float, block_s: float) -> None:
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._lease_ms = max(1, int(lease_s * 1000))
        self._block_ms = max(1, int(block_s * 1000))
        self.lease_s = lease_s
        self._renew = redis.register_script(_RENEW_LUA)
        self._keep = redis.register_script(_KEEP_LUA)
        self._drop = redis.register_script(_DROP_LUA)
        self._written: dict[str, asyncio.Event] = {}
        """Answer streams this process is writing: their followers here wait on the event
        instead of a blocking read (no pooled connection held per waiting request)."""

    async def claim(self, digest: str, fingerprint: str) -> tuple[Record, bool]:
        """The record of ``digest``, and whether this call created it (then it is to be run)."""
        mine = Record(fingerprint, new_id())
        async with unavailable_on_disconnect("claiming an Idempotency-Key"):
            found: bytes | None = await self._redis.set(  # type: ignore[assignment]
                keys.request_record_key(digest), mine.dumps(), nx=True, get=True, px=self._lease_ms
            )
        if found is None:
            self._written[keys.request_answer_stream(digest, mine.attempt)] = asyncio.Event()
            return mine, True
        return Record.loads(found), False

    async def renew(self, digest: str, record: Record) -> None:
        """Keep a running attempt's claim for another lease."""
        async with unavailable_on_disconnect("renewing an Idempotency-Key"):
            await self._renew(
                keys=[keys.request_record_key(digest)], args=[record.dumps(), self._lease_ms]
            )

    async def append(self, digest: str, record: Record, field: bytes, value: bytes) -> None:
        """Add one entry to the attempt's answer stream."""
        stream = keys.request_answer_stream(digest, record.attempt)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(stream, {field: value})
        pipe.pexpire(stream, self._ttl_ms + self._lease_ms)
        async with unavailable_on_disconnect("recording an answer"):
            await pipe.execute()
        self._wake_followers(stream)

    def _wake_followers(self, stream: str) -> None:
        """Wake this process's followers of ``stream`` (each waits on the event it saw last)."""
        written = self._written.get(stream)
        if written is not None:
            written.set()
            self._written[stream] = asyncio.Event()

    def stop_writing(self, digest: str, record: Record) -> None:
        """The run of ``record`` in this process is over (ended, or cancelled): its followers
        here stop waiting for appends from it and read as any other replica does."""
        written = self._written.pop(keys.request_answer_stream(digest, record.attempt), None)
        if written is not None:
            written.set()

    async def finish(self, digest: str, record: Record, *, keep: bool) -> None:
        """After the end entry: keep the record (``done``) for the TTL, or free the key."""
        key = keys.request_record_key(digest)
        async with unavailable_on_disconnect("finishing an Idempotency-Key"):
            if keep:
                done = Record(record.fingerprint, record.attempt, done=True)
                await self._keep(keys=[key], args=[record.dumps(), done.dumps(), self._ttl_ms])
            else:
                await self._drop(keys=[key], args=[record.dumps()])
                stream = keys.request_answer_stream(digest, record.attempt)
                await self._redis.pexpire(stream, self._lease_ms)

    async def follow(self, digest: str, record: Record) -> AsyncIterator[Entry]:
        """The attempt's answer from its start, as it is written, up to its end.

        Raises :class:`AttemptLost` once the stream stops growing and the record no longer
        names the attempt (its gateway died and the claim lapsed), Unavailable if Redis is down.
        """
        stream = keys.request_answer_stream(digest, record.attempt)
        last: bytes | str = b"0-0"
        while True:
            written = self._written.get(stream)  # before the read: no append can slip between
            async with unavailable_on_disconnect("reading a recorded answer"):
                block = None if written is not None else self._block_ms
                found = stream_entries(
                    await self._redis.xread({stream: last}, count=64, block=block)
                )
                if not found and written is None and not await self._names(digest, record):
                    found = stream_entries(await self._redis.xread({stream: last}, count=64))
                    if not found:
                        raise AttemptLost(
                            "the request this Idempotency-Key names stopped before it finished "
                            "(its gateway went away); retry"
                        )
            if not found and written is not None:  # written here: wait for the next append
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._block_ms / 1000):
                        await written.wait()
            for entry_id, fields in found:
                last = entry_id
                entry = _entry(fields)
                yield entry
                if entry.message is None:
                    return

    async def _names(self, digest: str, record: Record) -> bool:
        found = await self._redis.get(keys.request_record_key(digest))
        return found is not None and Record.loads(found).attempt == record.attempt


def start_entry(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The START value of a response start."""
    pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]
    return json.dumps({"status": status, "headers": pairs}).encode()


def _entry(fields: dict[bytes, bytes]) -> Entry:
    if START in fields:
        start = json.loads(fields[START])
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in start["headers"]]
        return Entry({"type": "http.response.start", "status": start["status"], "headers": headers})
    if BODY in fields:
        return Entry({"type": "http.response.body", "body": fields[BODY], "more_body": True})
    return Entry(None, fields.get(END, b"broken").decode())
