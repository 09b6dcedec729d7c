"""Every message type through real Redis: jobs via the queue, events via the reply stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.integration.workers.helpers import collect, gateway, running_worker
from tests.unit.workers import examples
from workers.handler import JobContext
from workers.protocol import Event, Failed, Job, Started, new_id
from workers.settings import QueueSettings, RedisSettings

# One Usage per job, as workers send it (the gateway keeps the first: workers.replies), so the
# second Usage example, the one with prompt_image_tokens, is not sent in the same job.
NON_TERMINAL = [
    name
    for name in examples.EVENTS
    if name not in ("started", "done", "failed", "usage_image_tokens")
]


def _fresh(job: Job, reply_to: str) -> Job:
    """The example job, routed to this gateway, with a live deadline and its own id."""
    return job.model_copy(
        update={
            "job_id": new_id(),
            "reply_to": reply_to,
            "deadline": time.time() + 20,
            "idempotency_key": new_id(),
        }
    )


class Echo:
    """Records each job it receives and emits every example event (ends with ``terminal``)."""

    def __init__(self, terminal: str) -> None:
        self.terminal = terminal
        self.received: list[Job] = []

    async def __call__(self, job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        self.received.append(job)
        for name in NON_TERMINAL:
            yield examples.EVENTS[name]
        yield examples.EVENTS[self.terminal]


@pytest.mark.parametrize("terminal", ["done", "failed"])
async def test_every_job_and_event_type_round_trips(
    redis: Redis, redis_settings: RedisSettings, queue_settings: QueueSettings, terminal: str
) -> None:
    llm, diffusion = Echo(terminal), Echo(terminal)
    async with gateway(redis_settings, queue_settings) as gw:
        jobs = [_fresh(job, gw.reply_to) for job in examples.JOBS.values()]
        subscriptions = [await gw.submit(job) for job in jobs]
        async with (
            running_worker(redis_settings, queue_settings, llm, model="seed-x-i"),
            running_worker(
                redis_settings, queue_settings, diffusion, stage="diffusion", model="seed-x-detok"
            ),
            running_worker(
                redis_settings,
                queue_settings,
                diffusion,
                stage="diffusion",
                model="seed-x-edit-detok",
            ),
        ):
            results = await asyncio.gather(*(collect(sub) for sub in subscriptions))
    received = {job.job_id: job for job in llm.received + diffusion.received}
    assert received == {job.job_id: job for job in jobs}
    expected = [examples.EVENTS[name] for name in [*NON_TERMINAL, terminal]]
    for job, replies in zip(jobs, results, strict=True):
        assert isinstance(replies[0].event, Started)
        assert [reply.event for reply in replies[1:]] == expected
        assert [reply.seq for reply in replies] == list(range(len(expected) + 1))
        assert {(r.job_id, r.request_id, r.trace_id) for r in replies} == {
            (job.job_id, job.request_id, job.trace_id)
        }
    if terminal == "failed":
        error = results[0][-1].event
        assert isinstance(error, Failed)
        assert error.error.to_error().http_status == 504
