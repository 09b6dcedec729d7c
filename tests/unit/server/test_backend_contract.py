"""What every backend of the gateway unit tests must do alike (issue 21), checked on both.

The gateway's tests trust :class:`~tests.unit.server.fakes.FakeBackend` to behave like the real
transport; these pin the contracts of the real ``Transport``/``Subscription`` and worker loop
that the gateway depends on, so a fake that drifts from them fails here, not in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.server.fakes import FakeBackend
from workers import keys
from workers.protocol import (
    ChatJob,
    ChatMessage,
    Done,
    Event,
    Failed,
    Job,
    Reply,
    Started,
    TextDelta,
    TextPart,
    new_id,
)
from workers.replies import Subscription


def chat_job(backend: Any, **changes: Any) -> ChatJob:
    values: dict[str, Any] = {
        "job_id": new_id(),
        "request_id": new_id(),
        "model": "seed-x-i",
        "deadline": time.time() + 30,
        "created_at": time.time(),
        "reply_to": backend.reply_to,
        "messages": (ChatMessage(role="user", content=(TextPart(text="hi"),)),),
        **changes,
    }
    return ChatJob(**values)


async def collect(stream: Any) -> list[Reply]:
    return await asyncio.wait_for(_all(stream), timeout=15)


async def _all(stream: Any) -> list[Reply]:
    return [reply async for reply in stream]


async def test_a_job_id_has_one_subscription_at_a_time(backend: FakeBackend) -> None:
    """The n=2 images bug: two jobs with one job_id are refused, as the real reader does."""
    job = chat_job(backend)
    stream = await backend.submit(job)
    with pytest.raises(ValueError, match="already has a subscription"):
        await backend.submit(job)
    replies = await collect(stream)
    assert isinstance(replies[0].event, Started)
    assert isinstance(replies[-1].event, Done)
    assert backend.jobs == [job]
    assert backend.received == [job]  # the worker got the job the gateway sent, field for field


async def test_a_job_must_name_this_backends_reply_stream(backend: FakeBackend) -> None:
    job = chat_job(backend, reply_to=keys.reply_stream("another-replica"))
    with pytest.raises(ValueError, match="reply_to"):
        await backend.submit(job)
    assert backend.jobs == []


async def test_the_worker_loop_frames_what_a_script_yields(backend: FakeBackend) -> None:
    """``Started`` first and a terminal event last, even when the script sends neither."""

    async def bare(job: Job, _backend: Any) -> AsyncIterator[Event]:
        yield TextDelta(text="only")

    backend.scripts["llm"] = bare
    replies = await collect(await backend.submit(chat_job(backend)))
    assert [type(reply.event) for reply in replies] == [Started, TextDelta, Done]
    assert [reply.seq for reply in replies] == [0, 1, 2]


async def test_a_script_that_raises_ends_its_job_failed(backend: FakeBackend) -> None:
    async def broken(job: Job, _backend: Any) -> AsyncIterator[Event]:
        yield TextDelta(text="partial")
        raise RuntimeError("engine bug")

    backend.scripts["llm"] = broken
    replies = await collect(await backend.submit(chat_job(backend)))
    assert [type(reply.event) for reply in replies] == [Started, TextDelta, Failed]
    failed = replies[-1].event
    assert isinstance(failed, Failed)
    assert failed.error.code == "internal_error"


async def test_cancelling_a_waiter_ends_it_even_as_an_event_arrives(backend: FakeBackend) -> None:
    """A request whose client leaves is cancelled at once, whatever its job is doing.

    The race: the job's next event reaches the stream in the same loop turn as the
    cancellation (a token streaming while the client disconnects). The waiter must end
    cancelled, not take the event and wait on for the one after.
    """
    gate = asyncio.Event()

    async def waiting(job: Job, _backend: Any) -> AsyncIterator[Event]:
        yield TextDelta(text="a")
        await gate.wait()
        yield TextDelta(text="b")

    backend.scripts["llm"] = waiting
    job = chat_job(backend)
    stream = await backend.submit(job)
    events = aiter(stream)
    assert isinstance((await asyncio.wait_for(anext(events), 15)).event, Started)
    assert isinstance((await asyncio.wait_for(anext(events), 15)).event, TextDelta)
    waiter = asyncio.create_task(anext(events))
    await asyncio.sleep(0.05)  # the waiter is blocked on the stream
    try:
        if isinstance(stream, Subscription):  # what the real reply reader does on an event
            stream.offer(
                Reply(
                    job_id=job.job_id,
                    request_id=job.request_id,
                    attempt=1,
                    seq=2,
                    event=TextDelta(text="b"),
                )
            )
        else:  # the fake's script produces it
            gate.set()
        waiter.cancel()
        done, _ = await asyncio.wait([waiter], timeout=2)
        assert waiter in done, "the cancelled waiter is still waiting for the next event"
        assert waiter.cancelled(), "the cancellation was swallowed: the waiter took the event"
    finally:
        gate.set()
        waiter.cancel()
        stream.close()
        await backend.cancel(job.job_id)
