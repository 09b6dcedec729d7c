"""A real worker process for crash tests; the test SIGKILLs it (or it kills itself).

    python -m tests.integration.workers.worker_proc --redis-url URL --mode slow|crash|answer

``slow``: emits ``TextDelta("a")`` and then works "forever" (the test kills it mid-job).
``crash``: dies by SIGKILL as soon as it starts a job, like a job that segfaults the engine.
``answer``: streams the fixed answer of :func:`answer_tokens` for each of the job's ``n``
choices, but cut into events at random, as the LLM worker's timing does (see :func:`answer`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import AsyncIterator

from tests.integration.conftest import fast_queue_settings, fast_redis_settings
from tests.integration.workers.helpers import MODEL
from workers.connection import create_redis
from workers.handler import JobContext
from workers.protocol import ChatJob, Event, Job, TextDelta, TokenLogprob, Usage
from workers.worker import Worker


async def slow(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    yield TextDelta(text="a")
    await asyncio.sleep(3600)


async def crash(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    os.kill(os.getpid(), signal.SIGKILL)
    yield TextDelta(text="unreachable")


ANSWER_TOKENS = 40
_PIECES = ("a", "b", " ]]", " ]", "]", "é", "🙂", " the", "\n", "<", "字", "x")


def answer_tokens(choice: int) -> list[str]:
    """The tokens of choice ``choice``'s answer: the same in every process (a seeded rerun)."""
    rng = random.Random(1000 + choice)
    return [rng.choice(_PIECES) for _ in range(ANSWER_TOKENS)]


async def answer(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    """The fixed answers, with this process's own event boundaries, as vLLM's timing gives:
    1-4 tokens per event (steps merged while the consumer lags), text sometimes held back
    past its tokens' logprobs (a stop string could start), the choices interleaved at random."""
    assert isinstance(job, ChatJob)
    rng = random.Random()  # unseeded: each attempt splits the answer its own way
    n = job.sampling.n
    tokens = [answer_tokens(c) for c in range(n)]
    produced = [0] * n  # tokens generated per choice
    texts = [""] * n  # their text
    released = [0] * n  # characters of it sent
    with_logprobs = job.sampling.logprobs is not None
    while any(p < ANSWER_TOKENS for p in produced):
        c = rng.choice([c for c in range(n) if produced[c] < ANSWER_TOKENS])
        step = tokens[c][produced[c] : produced[c] + rng.randint(1, 4)]
        produced[c] += len(step)
        texts[c] += "".join(step)
        end = len(texts[c])
        if produced[c] < ANSWER_TOKENS and rng.random() < 0.3:
            end = rng.randint(released[c], end)  # hold some text back
        logprobs = None
        if with_logprobs:
            start = produced[c] - len(step)
            logprobs = tuple(
                TokenLogprob(token=t, logprob=-float(start + i)) for i, t in enumerate(step)
            )
        yield TextDelta(text=texts[c][released[c] : end], choice=c, logprobs=logprobs)
        released[c] = end
        await asyncio.sleep(rng.uniform(0.01, 0.05))
    yield Usage(prompt_tokens=1, completion_tokens=n * ANSWER_TOKENS)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--mode", choices=("slow", "crash", "answer"), required=True)
    args = parser.parse_args(argv)
    redis = create_redis(fast_redis_settings(args.redis_url))
    handler = {"slow": slow, "crash": crash, "answer": answer}[args.mode]
    worker = Worker(redis, fast_queue_settings(), stage="llm", model=MODEL, handler=handler)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(sys.argv[1:]))
