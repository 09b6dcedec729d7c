"""A reclaimed job's replay is deduplicated by position in the output, not by event count.

A worker's event boundaries depend on timing (vLLM merges the tokens of several steps into one
output when its consumer lags; text held back for stop strings or an unfinished character is
released at different points), so a second attempt splits the same answer into different events
than the first. What the client receives must still be the answer, byte for byte.
"""

from __future__ import annotations

import logging
from typing import cast

import pytest
from redis.asyncio import Redis

from workers.protocol import (
    BlobRef,
    Box,
    Boxes,
    Done,
    EmbeddingReady,
    Event,
    ImageReady,
    PartialImage,
    Reply,
    Started,
    TextDelta,
    TokenLogprob,
    Usage,
)
from workers.replies import ReplyReader, Subscription
from workers.settings import QueueSettings


def _subscription() -> Subscription:
    reader = ReplyReader(cast(Redis, object()), QueueSettings(reply_grace_s=0.0), "gw-test")
    return reader.subscribe("j", deadline=1e12)


class Attempt:
    """Stamps events as one attempt's ReplyWriter does: ``seq`` 0 is its Started."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.seq = 0

    def __call__(self, event: Event) -> Reply:
        reply = Reply(job_id="j", request_id="r", attempt=self.number, seq=self.seq, event=event)
        self.seq += 1
        return reply

    def started(self) -> Reply:
        return self(Started(worker_id=f"w{self.number}", queue_wait_s=0))


async def _delivered(replies: list[Reply]) -> list[Event]:
    sub = _subscription()
    for reply in replies:
        sub.offer(reply)
    return [reply.event for reply in await sub.collect()]


def _text(events: list[Event], choice: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta) and e.choice == choice)


def _lp(token: str) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=-1.0)


def _tokens(events: list[Event], choice: int = 0) -> list[str]:
    return [
        entry.token
        for e in events
        if isinstance(e, TextDelta) and e.choice == choice and e.logprobs
        for entry in e.logprobs
    ]


async def test_replay_chunked_differently_resumes_at_the_exact_character() -> None:
    one, two = Attempt(1), Attempt(2)
    events = await _delivered(
        [
            one.started(),
            one(TextDelta(text="a")),
            one(TextDelta(text="b")),
            one(TextDelta(text=" ]")),  # the worker is killed here
            two.started(),
            two(TextDelta(text="ab")),
            two(TextDelta(text=" ]]")),
            two(TextDelta(text="c")),
            two(Done()),
        ]
    )
    assert _text(events) == "ab ]]c"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", "b", " ]", "]", "c"]
    assert [e.type for e in events if not isinstance(e, TextDelta)] == [
        "started",
        "started",
        "done",
    ]


async def test_replay_in_smaller_pieces_adds_nothing_twice() -> None:
    one, two = Attempt(1), Attempt(2)
    events = await _delivered(
        [
            one.started(),
            one(TextDelta(text="hello wor")),
            two.started(),
            *(two(TextDelta(text=c)) for c in "hello world"),
            two(Done()),
        ]
    )
    assert _text(events) == "hello world"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["hello wor", "l", "d"]


async def test_choices_interleaved_differently_resume_each_at_its_own_position() -> None:
    one, two = Attempt(1), Attempt(2)
    events = await _delivered(
        [
            one.started(),
            one(TextDelta(text="Ab", choice=0)),
            one(TextDelta(text="X", choice=1)),
            one(TextDelta(text="c", choice=0)),
            two.started(),
            two(TextDelta(text="XYZ", choice=1)),
            two(TextDelta(text="A", choice=0)),
            two(TextDelta(text="bcd", choice=0)),
            two(TextDelta(text="!", choice=1)),
            two(Done(finish_reasons=("stop", "stop"))),
        ]
    )
    assert (_text(events, 0), _text(events, 1)) == ("Abcd", "XYZ!")


async def test_logprobs_resume_at_their_own_token_position() -> None:
    """Logprobs count tokens, text counts characters; text held back (a stop string could
    start) makes a delta carry logprobs of tokens whose text comes later."""
    one, two = Attempt(1), Attempt(2)
    events = await _delivered(
        [
            one.started(),
            one(TextDelta(text="He", logprobs=(_lp("He"),))),
            one(TextDelta(text="", logprobs=(_lp("llo"),))),  # "llo" held back
            two.started(),
            two(TextDelta(text="Hello", logprobs=(_lp("He"), _lp("llo")))),
            two(TextDelta(text=" you", logprobs=(_lp(" you"),))),
            two(Done()),
        ]
    )
    assert _text(events) == "Hello you"
    assert _tokens(events) == ["He", "llo", " you"]
    resumed = [e for e in events if isinstance(e, TextDelta)][2]
    assert (resumed.text, resumed.logprobs) == ("llo", ())


async def test_boxes_images_and_usage_are_delivered_once() -> None:
    box = Box(x1=1, y1=2, x2=3, y2=4)
    other = Box(x1=5, y1=6, x2=7, y2=8)
    ref = BlobRef(key="seedx:blob:e1", dtype="float16", shape=(64, 8))
    replayed = BlobRef(key="seedx:blob:e2", dtype="float16", shape=(64, 8))
    one, two = Attempt(1), Attempt(2)
    events = await _delivered(
        [
            one.started(),
            one(TextDelta(text="a box")),
            one(Boxes(boxes=(box,))),
            one(EmbeddingReady(embedding=ref, image_index=0)),
            one(Usage(prompt_tokens=3, completion_tokens=70, images=1)),  # killed before Done
            two.started(),
            two(TextDelta(text="a box")),
            two(Boxes(boxes=(box, other))),  # a step that closed two boxes
            two(EmbeddingReady(embedding=replayed, image_index=0)),
            two(EmbeddingReady(embedding=replayed, image_index=1)),
            two(Usage(prompt_tokens=3, completion_tokens=140, images=2)),
            two(Done()),
        ]
    )
    boxes = [b for e in events if isinstance(e, Boxes) for b in e.boxes]
    assert boxes == [box, other]
    embeddings = [(e.embedding.key, e.image_index) for e in events if isinstance(e, EmbeddingReady)]
    assert embeddings == [("seedx:blob:e1", 0), ("seedx:blob:e2", 1)]
    usages = [e for e in events if isinstance(e, Usage)]
    assert len(usages) == 1, "a replayed Usage would be counted twice"


async def test_diffusion_replay_delivers_each_preview_and_image_once() -> None:
    png = BlobRef(key="seedx:blob:p")
    one, two = Attempt(1), Attempt(2)
    events = await _delivered(
        [
            one.started(),
            one(PartialImage(image=png, partial_index=0)),
            two.started(),
            two(PartialImage(image=png, partial_index=0)),
            two(PartialImage(image=png, partial_index=1)),
            two(ImageReady(image=png, width=8, height=8, output_format="png")),
            two(Done()),
        ]
    )
    assert [getattr(e, "partial_index", e.type) for e in events] == [
        "started",
        0,
        "started",
        1,
        "image.ready",
        "done",
    ]


async def test_an_event_appended_twice_by_a_retry_is_delivered_once() -> None:
    one = Attempt(1)
    started = one.started()
    first = one(TextDelta(text="ab"))
    events = await _delivered([started, first, first, one(TextDelta(text="c")), one(Done())])
    assert _text(events) == "abc"


async def test_a_late_older_attempt_still_adds_what_was_not_delivered() -> None:
    """A worker that lost its lease but lives on (a long pause) and the one that took its job
    over both stream the same answer; their events interleave, the answer must not."""
    one, two = Attempt(1), Attempt(2)
    events = await _delivered(
        [
            one.started(),
            one(TextDelta(text="abc")),
            two.started(),
            two(TextDelta(text="a")),
            one(TextDelta(text="def")),
            two(TextDelta(text="bcd")),
            one(TextDelta(text="g")),
            one(Done()),
            two(TextDelta(text="efg")),
            two(Done()),
        ]
    )
    assert _text(events) == "abcdefg"


async def test_a_replay_that_differs_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    one, two = Attempt(1), Attempt(2)
    with caplog.at_level(logging.WARNING, logger="workers.replies"):
        events = await _delivered(
            [
                one.started(),
                one(TextDelta(text="abc")),
                two.started(),
                two(TextDelta(text="abX")),
                two(TextDelta(text="de")),
                two(Done()),
            ]
        )
    assert _text(events) == "abcde"  # what the client has cannot be taken back
    assert "differs" in caplog.text
