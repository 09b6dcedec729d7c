"""Events from workers back to the waiting request: one reply stream per gateway replica.

Workers append :class:`~workers.protocol.Reply` messages to the job's ``reply_to`` stream
(:class:`ReplyWriter`). Each gateway replica runs exactly one :class:`ReplyReader` task on its
stream (LitServe's ``response_queue_id``), which hands every event to the :class:`Subscription`
of its ``job_id``; no request holds a blocking Redis connection of its own. The reader keeps the
id of the last entry it read and resumes from it after a reconnect, so an outage loses nothing
(this is why results do not use pub/sub, which drops messages while disconnected).

A subscription never hangs: it ends with the job's terminal event, with ``DeadlineExceeded``
shortly after the job's deadline, or with ``Unavailable`` when the reader has been cut off from
Redis for ``reply_outage_s``. When Redis comes back without the stream's latest entries (a
failover to a replica that had not received them, a restart without persistence), reading goes
on from what the stream now holds: the jobs whose events were lost are re-run, by reclaim or by
:mod:`workers.lost_jobs`, and their replays are deduplicated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from workers import keys
from workers.connection import (
    CONNECTION_ERRORS,
    Backoff,
    retry_while_full,
    sleep_until,
    stop_task,
)
from workers.errors import DeadlineExceeded, StoreFull, TransportError, Unavailable
from workers.protocol import (
    Boxes,
    EmbeddingReady,
    ErrorPayload,
    Event,
    Failed,
    ImageReady,
    Job,
    PartialImage,
    Reply,
    TextDelta,
    Undecodable,
    Usage,
    encode,
    parse_reply,
)
from workers.queue import stream_entries
from workers.settings import QueueSettings

logger = logging.getLogger(__name__)

REPLY_FIELD = b"e"
_READ_COUNT = 512


class ReplyBatcher:
    """Coalesces the event appends of every job a worker runs into pipelined round trips.

    A worker relays one event per generated token of each running job. Sent one by one, 64
    streams decoding in lock-step cost 64 round trips per engine step; the tokens of one step
    reach the worker's loop together, so they can share a pipeline (one write, one read). Each
    caller still awaits its own append, so the events of a job stay in order, and a failed
    append raises in the job that made it.

    Group commit: an append that finds nothing in flight goes out at once on its own (a lone
    stream pays nothing for batching); appends arriving while one is in flight are queued and
    sent together by a flush task.
    """

    def __init__(self, redis: Redis, max_batch: int = 512) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[tuple[str, bytes, int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._direct = False  # a lone append is in flight

    async def append(self, stream: str, payload: bytes, maxlen: int) -> None:
        """XADD ``payload`` to ``stream``; returns once it is stored."""
        if not self._direct and self._flusher is None:
            self._direct = True
            try:
                await self._redis.xadd(
                    stream, {REPLY_FIELD: payload}, maxlen=maxlen, approximate=True
                )
            finally:
                self._direct = False
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((stream, payload, maxlen, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="reply-batcher")
        await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._send(batch)
        finally:
            self._flusher = None

    async def _send(self, batch: list[tuple[str, bytes, int, asyncio.Future[None]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for stream, payload, maxlen, _ in batch:
            pipe.xadd(stream, {REPLY_FIELD: payload}, maxlen=maxlen, approximate=True)
        try:
            results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:  # the worker is stopping
            for *_, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # the connection failed: every append of the batch did
            for *_, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for (*_, done), result in zip(batch, results, strict=True):
            if done.done():
                continue  # its job was cancelled while waiting
            if isinstance(result, Exception):
                done.set_exception(result)
            else:
                done.set_result(None)


class ReplyWriter:
    """Stamps and appends the events of one job attempt to the job's reply stream.

    Events go through a :class:`ReplyBatcher`: the worker's, shared by all its jobs, or one of
    the writer's own, which then sends each event at once.
    """

    def __init__(
        self,
        redis: Redis,
        settings: QueueSettings,
        *,
        reply_to: str,
        job_id: str,
        request_id: str,
        trace_id: str,
        attempt: int,
        batcher: ReplyBatcher | None = None,
        deadline: float | None = None,
    ) -> None:
        self._redis = redis
        self._deadline = deadline
        self._backoff_cap_s = settings.reconnect_backoff_cap_s
        self._batcher = batcher or ReplyBatcher(redis)  # alone, it sends each event at once
        self._maxlen = settings.reply_stream_maxlen
        self._reply_to = reply_to
        self._job_id = job_id
        self._request_id = request_id
        self._trace_id = trace_id
        self._attempt = attempt
        self._seq = 0

    @property
    def stream(self) -> str:
        """The reply stream the events go to."""
        return self._reply_to

    @property
    def maxlen(self) -> int:
        """The approximate cap of the reply stream."""
        return self._maxlen

    def unstamp(self) -> None:
        """Take back the last :meth:`stamp` (its event was not sent after all)."""
        self._seq -= 1

    def stamp(self, event: Event) -> Reply:
        """Wrap ``event`` in the next Reply of this attempt (``seq`` counts from 0)."""
        reply = Reply(
            job_id=self._job_id,
            request_id=self._request_id,
            trace_id=self._trace_id,
            attempt=self._attempt,
            seq=self._seq,
            event=event,
        )
        self._seq += 1
        return reply

    async def emit(self, event: Event) -> None:
        """Append one event (raises the redis error after retries; the job is then abandoned).

        With a ``deadline`` (the job's), an append Redis refuses for want of memory is retried
        with backoff until then, and then raises :class:`~workers.errors.StoreFull`.
        """
        payload = encode(self.stamp(event))
        if self._deadline is None:
            await self._batcher.append(self._reply_to, payload, self._maxlen)
            return
        try:
            await retry_while_full(
                lambda: self._batcher.append(self._reply_to, payload, self._maxlen),
                deadline=self._deadline,
                action="sending an event",
                backoff_cap_s=self._backoff_cap_s,
            )
        except StoreFull:
            self.unstamp()  # never stored: the terminal event takes its place in the sequence
            raise

    def emit_in(self, pipe: Pipeline, event: Event) -> None:
        """Queue the event on ``pipe`` (to commit it atomically with the job's ack)."""
        pipe.xadd(
            self._reply_to,
            {REPLY_FIELD: encode(self.stamp(event))},
            maxlen=self._maxlen,
            approximate=True,
        )


class _AttemptCursor:
    """How far one attempt's own output has got (per choice), from its events in ``seq`` order."""

    __slots__ = ("boxes", "chars", "next_seq", "tokens")

    def __init__(self) -> None:
        self.next_seq = 0
        self.chars: dict[int, int] = {}  # text characters, per choice
        self.tokens: dict[int, int] = {}  # logprob entries, per choice
        self.boxes: dict[int, int] = {}  # boxes, per choice


class _Delivered:
    """What the waiter already received, as positions in the output (per choice)."""

    def __init__(self) -> None:
        self.text: dict[int, list[str]] = {}  # the pieces, to check a replay's overlap
        self.chars: dict[int, int] = {}
        self.tokens: dict[int, int] = {}
        self.boxes: dict[int, int] = {}
        self.once: set[tuple[str | int, ...]] = set()  # events delivered once: see _identity
        self.diverged = False


class Subscription:
    """The events of one job, deduplicated, as an async iterator of Reply.

    Iteration stops after the terminal event (``Done``/``Failed``). When a job is reclaimed after
    a worker died, the new attempt generates the answer again from its start (the gateway sets
    a seed, so it is the same answer), but splits it into events differently: a worker's event
    boundaries depend on timing (vLLM merges the tokens of several steps when its consumer lags;
    text held back for a stop string or an unfinished character is released at different
    points; the choices of ``n > 1`` interleave in any order). So a replay is deduplicated by
    *position in the output*, never by event count: each event's position is where its attempt
    had got to before it (text characters, logprob entries and boxes of its choice), counted
    from the attempt's own events, which reach the reader complete and in ``seq`` order; only
    the part past what the waiter already received is delivered (a text delta may be cut).
    Images count by their indices (``EmbeddingReady``: choice and image_index; diffusion
    previews: partial_index), ``Usage`` is delivered once. Every attempt is a source of the
    same answer, so a late event of an older attempt (a worker that lost its lease but lives
    on) is welcome too. An event appended twice (a retried write) repeats its ``seq`` and is
    dropped. Each attempt's ``Started`` is delivered, so the caller can see that a retry
    happened. A replay whose overlapping text differs from what was delivered (a
    nondeterministic rerun) is logged: what the client has cannot be taken back.
    """

    def __init__(self, reader: ReplyReader, job_id: str, deadline: float, grace_s: float) -> None:
        self.job_id = job_id
        self._reader = reader
        self._give_up_at = deadline + grace_s
        # Set by the transport once the job is enqueued; read by workers.lost_jobs.
        self.job: Job | None = None
        self.entry_id: str | None = None
        self.missing_since: float | None = None
        self._queue: asyncio.Queue[Reply | TransportError] = asyncio.Queue()
        self._attempts: dict[int, _AttemptCursor] = {}
        self._delivered = _Delivered()
        self._closed_for_input = False
        self._finished = False

    def offer(self, reply: Reply) -> bool:
        """Called by the reader: queue what ``reply`` adds to the answer; True if terminal."""
        if self._closed_for_input:
            return False
        if reply.is_terminal:
            self._closed_for_input = True
            self._queue.put_nowait(reply)
            return True
        cursor = self._attempts.setdefault(reply.attempt, _AttemptCursor())
        if reply.seq < cursor.next_seq:
            return False  # appended twice
        if reply.seq > cursor.next_seq:
            logger.warning(
                "job %s attempt %d: events %d..%d never arrived; its replay may be misplaced",
                self.job_id, reply.attempt, cursor.next_seq, reply.seq - 1,
            )  # fmt: skip
        cursor.next_seq = reply.seq + 1
        news = self._news(cursor, reply)
        if news is not None:
            self._queue.put_nowait(news)
        return False

    def _news(self, cursor: _AttemptCursor, reply: Reply) -> Reply | None:
        """``reply`` cut to what it adds past the delivered positions (None: nothing)."""
        event = reply.event
        if isinstance(event, TextDelta):
            return self._text_news(cursor, reply, event)
        if isinstance(event, Boxes):
            return self._boxes_news(cursor, reply, event)
        identity = _identity(event)
        if identity is None:
            return reply  # Started (each attempt's), and any event without a position
        if identity in self._delivered.once:
            return None
        self._delivered.once.add(identity)
        return reply

    def _boxes_news(self, cursor: _AttemptCursor, reply: Reply, event: Boxes) -> Reply | None:
        at = cursor.boxes.get(event.choice, 0)
        cursor.boxes[event.choice] = end = at + len(event.boxes)
        done = self._delivered.boxes.get(event.choice, 0)
        if end <= done:
            return None
        self._delivered.boxes[event.choice] = end
        if at >= done:
            return reply
        return _replaced(reply, event.model_copy(update={"boxes": event.boxes[done - at :]}))

    def _text_news(self, cursor: _AttemptCursor, reply: Reply, event: TextDelta) -> Reply | None:
        seen, choice = self._delivered, event.choice
        text, logprobs = event.text, event.logprobs
        at = cursor.chars.get(choice, 0)
        cursor.chars[choice] = end = at + len(text)
        done = seen.chars.get(choice, 0)
        cut = at < done
        if cut:  # a replay: drop what the waiter has, after checking it is the same
            self._check_overlap(choice, at, text[: done - at])
            text = text[done - at :]
        if text:
            seen.chars[choice] = end
            seen.text.setdefault(choice, []).append(text)
        if logprobs is not None:
            at = cursor.tokens.get(choice, 0)
            cursor.tokens[choice] = end = at + len(logprobs)
            done = seen.tokens.get(choice, 0)
            if at < done:
                cut, logprobs = True, logprobs[done - at :]
            seen.tokens[choice] = max(done, end)
        if not cut:
            return reply
        if not text and not logprobs:
            return None
        return _replaced(reply, event.model_copy(update={"text": text, "logprobs": logprobs}))

    def _check_overlap(self, choice: int, at: int, replayed: str) -> None:
        seen = self._delivered
        if seen.diverged:
            return
        pieces = seen.text.get(choice, [])
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        delivered = pieces[0][at : at + len(replayed)] if pieces else ""
        if delivered != replayed:
            seen.diverged = True
            logger.warning(
                "job %s: a reclaimed attempt's answer differs from what was delivered at "
                "character %d of choice %d (a nondeterministic rerun); the answer continues "
                "from the new attempt",
                self.job_id, at, choice,
            )  # fmt: skip

    def abort(self, error: TransportError) -> None:
        """Called by the reader: end the iteration with ``error`` (unless already finished)."""
        if not self._closed_for_input:
            self._closed_for_input = True
            self._queue.put_nowait(error)

    def __aiter__(self) -> AsyncIterator[Reply]:
        return self

    async def __anext__(self) -> Reply:
        if self._finished:
            raise StopAsyncIteration
        item = await self._next_item()
        if isinstance(item, TransportError):
            self._finish()
            raise item
        if item.is_terminal:
            self._finish()
        return item

    async def _next_item(self) -> Reply | TransportError:
        """The next queued item; what already arrived is delivered even past the deadline."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # lands in the loop turn its inner get() completes, so a request whose client left as
        # an event arrived kept waiting for the job's next one (found by the unit tests run on
        # the real transport).
        try:
            async with asyncio.timeout(max(0.0, self._give_up_at - time.time())):
                return await self._queue.get()
        except TimeoutError:
            return DeadlineExceeded(f"job {self.job_id} did not finish before its deadline")

    async def collect(self) -> list[Reply]:
        """Every event up to and including the terminal one."""
        return [reply async for reply in self]

    @property
    def finished(self) -> bool:
        """Whether the terminal event (or an error) has arrived: nothing more is awaited."""
        return self._closed_for_input

    def close(self) -> None:
        """Stop receiving events (idempotent); later events for this job are dropped."""
        self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._closed_for_input = True
        self._reader.unsubscribe(self.job_id, self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _identity(event: Event) -> tuple[str | int, ...] | None:
    """What makes an event that is delivered once what it is (None: no such event)."""
    if isinstance(event, EmbeddingReady):
        return ("embedding", event.choice, event.image_index)
    if isinstance(event, PartialImage):
        return ("partial", event.image_index, event.partial_index)
    if isinstance(event, ImageReady):
        return ("image", event.image_index)
    if isinstance(event, Usage):
        return ("usage",)
    return None


def _replaced(reply: Reply, event: Event) -> Reply:
    """``reply`` carrying ``event`` instead of its own (a replayed event, cut)."""
    return reply.model_copy(update={"event": event})


class ReplyReader:
    """The one reader task of a gateway replica's reply stream."""

    def __init__(self, redis: Redis, settings: QueueSettings, replica_id: str) -> None:
        self.stream = keys.reply_stream(replica_id)
        self._redis = redis
        self._settings = settings
        self._subs: dict[str, Subscription] = {}
        self._last_id = b"0-0"
        self._down_since: float | None = None
        self._last_outage: tuple[float, float] | None = None
        self._outage_reported = False
        self._next_trim = 0.0
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """False while the reader cannot reach Redis (for /readyz)."""
        return self._down_since is None

    @property
    def last_outage(self) -> tuple[float, float] | None:
        """When the reader last lost Redis and when it reached it again (``time.monotonic``)."""
        return self._last_outage

    @property
    def last_id(self) -> bytes:
        """The id of the last entry read (where a reconnect resumes)."""
        return self._last_id

    async def start(self) -> None:
        """Start reading from the current end of the stream (from 0 if Redis is unreachable)."""
        if self._task is not None:
            raise RuntimeError("reply reader already started")
        try:
            self._last_id = await self._stream_end() or b"0-0"
        except CONNECTION_ERRORS as exc:
            logger.warning("reply reader starts while redis is unreachable: %s", exc)
            self._down_since = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"reply-reader:{self.stream}")

    async def close(self) -> None:
        """Stop the task; waiting subscriptions end with Unavailable."""
        self._closing.set()
        if self._task is not None:
            await stop_task(self._task, self._settings.block_s + 2.0)
            self._task = None
        self._abort_all("the gateway is shutting down")

    def subscribe(self, job_id: str, deadline: float) -> Subscription:
        """Register interest in ``job_id`` (do it before enqueueing, so no event is missed)."""
        if job_id in self._subs:
            raise ValueError(f"job {job_id} already has a subscription")
        sub = Subscription(self, job_id, deadline, self._settings.reply_grace_s)
        if self._outage_reported:
            sub.abort(Unavailable("the reply stream is unreachable; retry later"))
            return sub
        self._subs[job_id] = sub
        return sub

    def unsubscribe(self, job_id: str, sub: Subscription) -> None:
        """Forget a subscription (called by the subscription itself)."""
        if self._subs.get(job_id) is sub:
            del self._subs[job_id]

    def subscriptions(self) -> list[Subscription]:
        """The subscriptions waiting for events now."""
        return list(self._subs.values())

    @property
    def waiting(self) -> int:
        """Subscriptions currently waiting for events."""
        return len(self._subs)

    async def _run(self) -> None:
        backoff = Backoff(self._settings.reconnect_backoff_cap_s)
        while not self._closing.is_set():
            try:
                if self._down_since is not None:
                    await self._recover()
                await self._read_batch()
                await self._maybe_trim()
                backoff.reset()
            except CONNECTION_ERRORS as exc:
                self._on_disconnect(exc)
                await sleep_until(self._closing, backoff.next_delay())
            except Exception:
                logger.exception("reply reader failed; retrying")
                await sleep_until(self._closing, backoff.next_delay())

    async def _read_batch(self) -> None:
        block_ms = int(self._settings.block_s * 1000)
        response = await self._redis.xread(
            {self.stream: self._last_id}, count=_READ_COUNT, block=block_ms
        )
        for entry_id, fields in stream_entries(response):
            self._last_id = entry_id
            self._dispatch(fields.get(REPLY_FIELD, b""))

    def _dispatch(self, raw: bytes) -> None:
        parsed = parse_reply(raw)
        if isinstance(parsed, Undecodable):
            self._dispatch_undecodable(parsed)
            return
        sub = self._subs.get(parsed.job_id)
        if sub is None:
            logger.debug("reply for unknown or finished job %s dropped", parsed.job_id)
            return
        if sub.offer(parsed):
            self.unsubscribe(parsed.job_id, sub)

    def _dispatch_undecodable(self, parsed: Undecodable) -> None:
        sub = self._subs.get(parsed.job_id) if parsed.job_id else None
        logger.warning("undecodable reply for job %s: %s", parsed.job_id, parsed.error.message)
        if sub is None:
            return
        failed = Failed(error=ErrorPayload.from_error(parsed.error))
        reply = Reply(
            job_id=sub.job_id,
            request_id=parsed.request_id or sub.job_id,
            trace_id=parsed.trace_id,
            attempt=1,
            seq=0,
            event=failed,
        )
        sub.offer(reply)
        self.unsubscribe(sub.job_id, sub)

    async def _maybe_trim(self) -> None:
        """Drop entries already read (only this reader reads the stream) and keep it alive."""
        now = time.monotonic()
        if now < self._next_trim or self._last_id == b"0-0":
            return
        self._next_trim = now + self._settings.trim_interval_s
        pipe = self._redis.pipeline(transaction=False)
        pipe.xtrim(self.stream, minid=self._last_id, approximate=True)
        pipe.pexpire(self.stream, int(self._settings.reply_stream_ttl_s * 1000))
        await pipe.execute()

    async def _stream_end(self) -> bytes | None:
        if not await self._redis.exists(self.stream):
            return None
        info = await self._redis.xinfo_stream(self.stream)
        last: bytes = info["last-generated-id"]
        return last

    async def _recover(self) -> None:
        """After reconnecting: notice that Redis lost the stream's latest entries (a failover to
        a replica that lagged, a restart without persistence) and read on from its end then.

        The reader trims only entries before the last one it read, so that entry must still
        exist; if it does not, Redis holds an earlier state of the stream (every entry up to its
        latest one before ``last_id`` was read already) and maybe entries appended since it came
        back, which may already be there: reading resumes after that latest earlier entry, not
        at the stream's end. Waiters are not ended: their jobs are re-run (reclaimed, or
        enqueued again by :mod:`workers.lost_jobs`) and answer again, deduplicated by the
        subscriptions.
        """
        lost = self._last_id != b"0-0" and not await self._redis.xrange(
            self.stream, min=self._last_id, max=self._last_id, count=1
        )
        if lost:
            earlier = await self._redis.xrevrange(self.stream, max=self._last_id, min="-", count=1)
            self._last_id = earlier[0][0] if earlier else b"0-0"  # type: ignore[assignment]
        now = time.monotonic()
        began = self._down_since if self._down_since is not None else now
        logger.info("reply reader reconnected after %.1fs (stream lost: %s)", now - began, lost)
        self._last_outage = (began, now)
        self._down_since = None
        self._outage_reported = False

    def _on_disconnect(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            logger.warning("reply reader lost redis: %s; reconnecting", exc)
            self._down_since = now
        if not self._outage_reported and now - self._down_since >= self._settings.reply_outage_s:
            self._outage_reported = True
            self._abort_all("the reply stream is unreachable; retry later")

    def _abort_all(self, message: str) -> None:
        subs, self._subs = self._subs, {}
        if subs:
            logger.warning("ending %d waiting requests: %s", len(subs), message)
        for sub in subs.values():
            sub.abort(Unavailable(message))
