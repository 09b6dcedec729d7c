"""A real worker process for crash tests; the test SIGKILLs it (or it kills itself).

    python -m tests.integration.workers.worker_proc --redis-url URL --mode slow|crash

``slow``: emits ``TextDelta("a")`` and then works "forever" (the test kills it mid-job).
``crash``: dies by SIGKILL as soon as it starts a job, like a job that segfaults the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

from tests.integration.conftest import fast_queue_settings, fast_redis_settings
from tests.integration.workers.helpers import MODEL
from workers.connection import create_redis
from workers.handler import JobContext
from workers.protocol import Event, Job, TextDelta
from workers.worker import Worker


async def slow(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    yield TextDelta(text="a")
    await asyncio.sleep(3600)


async def crash(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    os.kill(os.getpid(), signal.SIGKILL)
    yield TextDelta(text="unreachable")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--mode", choices=("slow", "crash"), required=True)
    args = parser.parse_args(argv)
    redis = create_redis(fast_redis_settings(args.redis_url))
    handler = slow if args.mode == "slow" else crash
    worker = Worker(redis, fast_queue_settings(), stage="llm", model=MODEL, handler=handler)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(sys.argv[1:]))
