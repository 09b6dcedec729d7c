"""Pure logic of the transport: error table, settings checks, stream ids, reply dedupe."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from tests.unit.workers import examples
from workers.connection import Backoff
from workers.errors import (
    WIRE_ERRORS,
    Cancelled,
    DeadlineExceeded,
    Overloaded,
    TransportError,
    Unavailable,
    error_for_code,
)
from workers.logcontext import JobContextFilter, bind_job
from workers.protocol import Done, Reply, Started, TextDelta
from workers.queue import next_entry_id, parse_entry_id, stream_entries
from workers.replies import ReplyReader
from workers.settings import QueueSettings


@pytest.mark.parametrize(
    ("cls", "status", "kind"),
    [
        (Unavailable, 503, "server_error"),
        (Overloaded, 429, "rate_limit_error"),
        (DeadlineExceeded, 504, "server_error"),
        (Cancelled, 499, "invalid_request_error"),
    ],
)
def test_error_classes_carry_status_and_type(
    cls: type[TransportError], status: int, kind: str
) -> None:
    error = cls("msg", param="p")
    assert (error.http_status, error.type, error.message, error.param) == (status, kind, "msg", "p")


def test_wire_codes_are_unique_and_round_trip() -> None:
    codes = [cls.code for cls in WIRE_ERRORS]
    assert len(codes) == len(set(codes))
    for cls in WIRE_ERRORS:
        assert type(error_for_code(cls.code, "m")) is cls


def test_lease_must_outlast_two_heartbeats() -> None:
    with pytest.raises(ValidationError, match="at most half"):
        QueueSettings(lease_s=1.0, heartbeat_interval_s=0.6)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEDX_QUEUE_MAX_DELIVERIES", "5")
    assert QueueSettings().max_deliveries == 5


def test_entry_ids() -> None:
    assert parse_entry_id(b"1700000000000-3") == (1700000000000, 3)
    assert parse_entry_id("5-0") < parse_entry_id("5-1") < parse_entry_id("6-0")
    assert next_entry_id(b"1700000000000-3") == "1700000000000-4"


def test_stream_entries_accept_resp2_and_resp3() -> None:
    entries = [(b"1-0", {b"job": b"a"}), (b"2-0", {b"job": b"b"})]
    assert stream_entries([[b"s", entries]]) == entries
    assert stream_entries({b"s": entries}) == entries
    assert stream_entries(None) == []


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(cap_s=0.4, base_s=0.05)
    delays = [backoff.next_delay() for _ in range(8)]
    assert all(0.025 <= d <= 0.4 for d in delays)
    assert delays[-1] >= 0.2
    backoff.reset()
    assert backoff.next_delay() <= 0.05


def test_log_filter_adds_job_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    job_filter = JobContextFilter()
    job_filter.filter(record)
    assert (record.job_id, record.trace_id) == ("-", "-")
    with bind_job("j1", "t1"):
        job_filter.filter(record)
    assert (record.job_id, record.trace_id) == ("j1", "t1")


# --- reply dedupe (Subscription) ------------------------------------------------------------
def _reader() -> ReplyReader:
    """A reader that is never started: subscribe/dispatch do not touch Redis."""
    return ReplyReader(cast(Redis, object()), QueueSettings(reply_grace_s=0.0), "gw-test")


def _reply(attempt: int, seq: int, event: object) -> Reply:
    return Reply(job_id="j", request_id="r", attempt=attempt, seq=seq, event=event)


async def test_replay_of_a_reclaimed_job_is_dropped() -> None:
    """By position in the answer (tests/unit/workers/test_resume.py has the cases)."""
    reader = _reader()
    sub = reader.subscribe("j", deadline=1e12)
    started1 = _reply(1, 0, Started(worker_id="w1", queue_wait_s=0))
    stream = [
        started1,
        _reply(1, 1, TextDelta(text="a")),
        _reply(2, 0, Started(worker_id="w2", queue_wait_s=0)),
        _reply(2, 1, TextDelta(text="a")),  # replay: dropped
        _reply(1, 2, TextDelta(text="b")),  # the older attempt lives on: it adds "b"
        _reply(2, 2, TextDelta(text="b")),  # replay: dropped
        _reply(2, 3, TextDelta(text="c")),
        _reply(2, 4, Done()),
        _reply(1, 3, Done()),  # second terminal: dropped
    ]
    for reply in stream:
        sub.offer(reply)
    got = await sub.collect()
    assert [(r.attempt, r.seq, r.event.type) for r in got] == [
        (1, 0, "started"),
        (1, 1, "text.delta"),
        (2, 0, "started"),
        (1, 2, "text.delta"),
        (2, 3, "text.delta"),
        (2, 4, "done"),
    ]


async def test_subscription_ends_at_its_deadline() -> None:
    reader = _reader()
    sub = reader.subscribe("j", deadline=0.0)
    with pytest.raises(DeadlineExceeded):
        await sub.__anext__()
    assert reader.waiting == 0
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


async def test_abort_wakes_the_waiter_with_the_error() -> None:
    reader = _reader()
    sub = reader.subscribe("j", deadline=1e12)
    waiter = asyncio.ensure_future(sub.collect())
    await asyncio.sleep(0)
    sub.abort(Unavailable("down"))
    with pytest.raises(Unavailable):
        await waiter


async def test_closing_the_reader_ends_every_waiter() -> None:
    reader = _reader()
    subs = [reader.subscribe(f"j{i}", deadline=1e12) for i in range(3)]
    await reader.close()
    for sub in subs:
        with pytest.raises(Unavailable):
            await sub.collect()


def test_one_subscription_per_job_and_close_frees_it() -> None:
    reader = _reader()
    sub = reader.subscribe("j", deadline=1e12)
    with pytest.raises(ValueError, match="already"):
        reader.subscribe("j", deadline=1e12)
    sub.close()
    assert reader.waiting == 0
    reader.subscribe("j", deadline=1e12)


async def test_terminal_event_unregisters_the_subscription() -> None:
    reader = _reader()
    sub = reader.subscribe("j", deadline=1e12)
    reader._dispatch(examples.reply("done").model_dump_json().encode().replace(b"job-0001", b"j"))
    assert reader.waiting == 0
    assert [r.event.type for r in await sub.collect()] == ["done"]


async def test_undecodable_reply_fails_its_waiter() -> None:
    reader = _reader()
    sub = reader.subscribe("job-0001", deadline=1e12)
    raw = (
        examples.reply("text_delta")
        .model_dump_json()
        .replace('"schema_version":1', '"schema_version":7')
    )
    reader._dispatch(raw.encode())
    (only,) = await sub.collect()
    assert only.event.type == "failed"
    assert only.event.error.code == "unsupported_schema"  # type: ignore[union-attr]


async def test_events_that_arrived_are_delivered_even_past_the_deadline() -> None:
    reader = _reader()
    sub = reader.subscribe("j", deadline=0.0)
    sub.offer(_reply(1, 0, Started(worker_id="w", queue_wait_s=0)))
    sub.offer(_reply(1, 1, Done()))
    assert [r.event.type for r in await sub.collect()] == ["started", "done"]
