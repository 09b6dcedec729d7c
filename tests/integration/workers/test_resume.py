"""A worker SIGKILLed mid-answer: the answer the client receives is the uninterrupted one, byte
for byte (issue 21 item 5). The worker process streams a fixed answer (a seeded rerun gives the
same tokens) with event boundaries of its own, as the LLM worker's timing makes them, so the
attempt that takes the job over splits the answer differently from the one that was killed.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.workers.helpers import chat_job, gateway
from tests.integration.workers.worker_proc import ANSWER_TOKENS, answer_tokens
from workers.protocol import SamplingParams, TextDelta
from workers.replies import Subscription
from workers.settings import QueueSettings, RedisSettings
from workers.transport import Transport

ROOT = Path(__file__).resolve().parents[3]
KILL_POINTS = 4
CHOICES = 2

Answer = tuple[list[str], list[list[str]]]  # per choice: text, logprob tokens


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _worker(procs: list[subprocess.Popen[bytes]], url: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.integration.workers.worker_proc", "--mode", "answer"]
    proc = subprocess.Popen(
        [*cmd, "--redis-url", url], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    procs.append(proc)
    return proc


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def _receive(
    events: Subscription, kill_after: int | None, kill: object
) -> tuple[Answer, set[int]]:
    texts = [""] * CHOICES
    tokens: list[list[str]] = [[] for _ in range(CHOICES)]
    attempts: set[int] = set()
    async for reply in events:
        attempts.add(reply.attempt)
        event = reply.event
        if isinstance(event, TextDelta):
            texts[event.choice] += event.text
            tokens[event.choice] += [entry.token for entry in event.logprobs or ()]
        if kill_after is not None and sum(map(len, texts)) >= kill_after:
            kill_after = None
            await kill()  # type: ignore[operator]
    return (texts, tokens), attempts


async def _answer(
    gw: Transport, procs: list[subprocess.Popen[bytes]], url: str, kill_after: int | None
) -> tuple[Answer, set[int]]:
    """One job (n choices, logprobs), on a fresh worker process; SIGKILLed once the client has
    ``kill_after`` characters, then a new worker process takes the job over."""
    sampling = SamplingParams(n=CHOICES, logprobs=1, seed=7, max_tokens=ANSWER_TOKENS)
    events = await gw.submit(chat_job(gw.reply_to, deadline_s=60, sampling=sampling))
    victim = _worker(procs, url)

    async def kill() -> None:
        victim.kill()  # SIGKILL: no ack, no goodbye; the lease runs out
        while victim.poll() is None:
            await asyncio.sleep(0.01)
        _worker(procs, url)  # the restarted worker

    try:
        return await asyncio.wait_for(_receive(events, kill_after, kill), 60)
    finally:
        _stop_all(procs)


async def test_a_resumed_answer_is_byte_identical_to_the_uninterrupted_one(
    redis_url: str,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    rng = random.Random(time.time_ns())
    async with gateway(redis_settings, queue_settings) as gw:
        reference, attempts = await _answer(gw, procs, redis_url, kill_after=None)
        assert attempts == {1}
        assert reference[0] == ["".join(answer_tokens(c)) for c in range(CHOICES)]
        assert reference[1] == [answer_tokens(c) for c in range(CHOICES)]
        total = sum(map(len, reference[0]))
        kill_points = sorted(rng.randint(1, total * 3 // 4) for _ in range(KILL_POINTS))
        for kill_after in kill_points:
            received, attempts = await _answer(gw, procs, redis_url, kill_after)
            assert attempts == {1, 2}, f"the kill after {kill_after} characters came too late"
            text = [t.encode() for t in received[0]]
            assert text == [t.encode() for t in reference[0]], f"killed after {kill_after}"
            assert received[1] == reference[1], f"logprobs, killed after {kill_after}"
