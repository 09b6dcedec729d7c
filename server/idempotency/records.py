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

Followers in the process that runs the attempt (every first client, and retries that reach the
same replica) read its entries from that run's in-process log as the app sends them, waiting on
an event: no Redis read and no pooled connection per waiting request, and no round trip between
the app and its client (the writes follow, every run's together: :class:`_Writer`; ``seedx bench
gateway --idempotency-keys`` measures what is left). Others (a
retry on another replica, or after the run) read the stream: ``XREAD``, waiting in ``XREAD
BLOCK`` of at most ``queue.block_s`` while the answer is being written, and checking after each
empty wait that the claim is still held.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from workers import keys
from workers.connection import unavailable_on_disconnect
from workers.errors import TransportError, Unavailable
from workers.protocol import new_id
from workers.queue import stream_entries

START, BODY, END = b"start", b"body", b"end"
"""The field of an answer stream entry: the response start (JSON status and headers), a body
chunk (bytes), the end (``ok``, ``error``: an error status, or ``broken``: cut short)."""

# KEYS: record. ARGV: the running record's value, lease_ms.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: record, answer stream. ARGV: running value, end, done value ('' to free the key),
# stream TTL (ms). The end entry, then the record kept (done) or freed, in one round trip.
_FINISH_LUA = """
redis.call('XADD', KEYS[2], '*', 'end', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[5])
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


_LOST = (
    "the request this Idempotency-Key names stopped before it finished (its gateway went away); "
    "retry"
)


WRITE_TICK_S = 0.005
"""How long the writer gathers entries before one pipelined write of all of them: the answers
of every keyed request in flight share a round trip (one per chunk cost a quarter of the
gateway's CPU with 64 streams). Readers on other replicas see an entry up to this late, and
a keyed answer ends (its END, after its writes) up to this late; its chunks are not delayed."""


class _Run:
    """An attempt this process runs: its entries in order, as the app sent them, for its
    followers here; the :class:`_Writer` stores them behind the log."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.entries: list[Entry] = []
        self.unwritten = 0
        self.created = False  # the stream exists (its TTL is set)
        self.error: TransportError | None = None
        self.closed = False
        self._grew = asyncio.Event()

    def log(self, entry: Entry) -> None:
        self.entries.append(entry)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._grew.set()
        self._grew = asyncio.Event()

    async def follow(self) -> AsyncIterator[Entry]:
        """Every entry from the first, waiting for the next; AttemptLost if the run stops
        without its END (cancelled at shutdown)."""
        index = 0
        while True:
            grew = self._grew
            while index < len(self.entries):
                index += 1
                yield self.entries[index - 1]
            if self.closed:
                raise AttemptLost(_LOST)
            await grew.wait()


class _Writer:
    """Stores the entries of every run of this process: one task, one pipeline per
    :data:`WRITE_TICK_S` for all that arrived, in order per stream. A failed write is the
    error of each run it carried (the app's next send raises it)."""

    def __init__(self, redis: Redis, stream_ttl_ms: int) -> None:
        self._redis = redis
        self._stream_ttl_ms = stream_ttl_ms
        self._pending: list[tuple[_Run, bytes, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, run: _Run, field: bytes, value: bytes) -> None:
        if run.error is not None:
            raise run.error
        self._pending.append((run, field, value))
        run.unwritten += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def written(self, run: _Run) -> None:
        """Until every entry of ``run`` is stored; raises its write's error."""
        while run.unwritten and run.error is None and self._task is not None:
            await asyncio.shield(self._task)
        if run.error is not None:
            raise run.error

    async def _flush(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(WRITE_TICK_S)
                batch, self._pending = self._pending, []
                pipe = self._redis.pipeline(transaction=False)
                for run, field, value in batch:
                    pipe.xadd(run.stream, {field: value})
                    if not run.created:  # the stream lives until its record's end
                        pipe.pexpire(run.stream, self._stream_ttl_ms)
                        run.created = True
                try:
                    async with unavailable_on_disconnect("recording an answer"):
                        await pipe.execute()
                except TransportError as exc:
                    for run, _, _ in batch:
                        run.error = exc
                for run, _, _ in batch:
                    run.unwritten -= 1
        finally:
            self._task = None


class RequestRecords:
    """Claims keys, writes attempts' answers, and reads them back (see the module docstring)."""

    def __init__(self, redis: Redis, *, ttl_s: float, lease_s: float, block_s: float) -> None:
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._lease_ms = max(1, int(lease_s * 1000))
        self._block_ms = max(1, int(block_s * 1000))
        self.lease_s = lease_s
        self._renew = redis.register_script(_RENEW_LUA)
        self._finish = redis.register_script(_FINISH_LUA)
        self._runs: dict[str, _Run] = {}
        """The answer streams this process is writing, by stream: their entries so far."""
        self._writer = _Writer(redis, self._ttl_ms + self._lease_ms)

    async def claim(self, digest: str, fingerprint: str) -> tuple[Record, bool]:
        """The record of ``digest``, and whether this call created it (then it is to be run)."""
        mine = Record(fingerprint, new_id())
        async with unavailable_on_disconnect("claiming an Idempotency-Key"):
            found: bytes | None = await self._redis.set(  # type: ignore[assignment]
                keys.request_record_key(digest), mine.dumps(), nx=True, get=True, px=self._lease_ms
            )
        if found is None:
            stream = keys.request_answer_stream(digest, mine.attempt)
            self._runs[stream] = _Run(stream)
            return mine, True
        return Record.loads(found), False

    async def renew(self, digest: str, record: Record) -> None:
        """Keep a running attempt's claim for another lease."""
        async with unavailable_on_disconnect("renewing an Idempotency-Key"):
            await self._renew(
                keys=[keys.request_record_key(digest)], args=[record.dumps(), self._lease_ms]
            )

    def append(self, digest: str, record: Record, field: bytes, value: bytes) -> None:
        """Add one entry (START or BODY) to the answer of an attempt this process runs: its
        followers here see it now, Redis a tick later (:class:`_Writer`); raises the error of an
        earlier write that failed."""
        run = self._runs[keys.request_answer_stream(digest, record.attempt)]
        self._writer.add(run, field, value)
        run.log(_entry({field: value}))

    async def finish(self, digest: str, record: Record, end: str, *, keep: bool) -> None:
        """Once the answer's entries are stored, write the END and keep the record (``done``)
        for the TTL, or free the key (the stream then stays one lease, for the followers reading
        it); then the followers here get the END: a client told its request failed can resend
        it at once, and a retry after an answer ended finds it kept."""
        stream = keys.request_answer_stream(digest, record.attempt)
        run = self._runs[stream]
        await self._writer.written(run)
        done = Record(record.fingerprint, record.attempt, done=True).dumps() if keep else b""
        stream_ttl_ms = self._ttl_ms + self._lease_ms if keep else self._lease_ms
        args: list[bytes | str | int] = [record.dumps(), end, done, stream_ttl_ms, self._ttl_ms]
        async with unavailable_on_disconnect("finishing an Idempotency-Key"):
            await self._finish(keys=[keys.request_record_key(digest), stream], args=args)
        run.log(_entry({END: end.encode()}))

    def stop_writing(self, digest: str, record: Record) -> None:
        """The run of ``record`` in this process is over (ended, or cancelled at shutdown):
        followers that arrive later read the stream."""
        run = self._runs.pop(keys.request_answer_stream(digest, record.attempt), None)
        if run is not None:
            run.close()

    async def follow(self, digest: str, record: Record) -> AsyncIterator[Entry]:
        """The attempt's answer from its start, as it is written, up to its end.

        Raises :class:`AttemptLost` when the attempt stopped without finishing (its gateway
        died and the claim lapsed, or it is shutting down), Unavailable if Redis is down.
        """
        stream = keys.request_answer_stream(digest, record.attempt)
        run = self._runs.get(stream)
        entries = run.follow() if run is not None else self._read(digest, record, stream)
        async for entry in entries:
            yield entry
            if entry.message is None:
                return

    async def _read(self, digest: str, record: Record, stream: str) -> AsyncIterator[Entry]:
        last: bytes | str = b"0-0"
        while True:
            async with unavailable_on_disconnect("reading a recorded answer"):
                found = stream_entries(
                    await self._redis.xread({stream: last}, count=64, block=self._block_ms)
                )
                if not found and not await self._names(digest, record):
                    found = stream_entries(await self._redis.xread({stream: last}, count=64))
                    if not found:
                        raise AttemptLost(_LOST)
            for entry_id, fields in found:
                last = entry_id
                yield _entry(fields)

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
