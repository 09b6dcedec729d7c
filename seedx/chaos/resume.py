"""A crash-resumed answer is the uninterrupted answer, byte for byte (issue 21 item 5).

The crash scenarios count lost *jobs*; a user counts lost *text*. :func:`resume` streams the same
chat requests first without a fault (the reference), then ``runs`` times again, SIGKILLing the
LLM worker that holds most of them at a random moment: every stream it held is taken over by
another worker, which generates the answer again from its start (greedy, or sampled with the
request's seed) and splits it into events its own way; the gateway delivers only what lies past
what the client already has (``workers.replies.Subscription``). Every received stream is
compared with its reference: the text of each choice as bytes, the tokens of its logprobs, the
finish reasons and the token usage.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from seedx.chaos.load import chat_body, client_for
from seedx.chaos.stack import LLM_MODEL, Stack

Figures = dict[str, Any]


def bodies(streams: int, max_tokens: int) -> list[dict[str, Any]]:
    """The requests of a run: greedy ones, sampled ones with a seed, one of them with two
    choices, and logprobs on every other one."""
    out = []
    for i in range(streams):
        body = chat_body(f"resume story {i}", max_tokens=max_tokens, stream=True)
        if i % 2:
            body.update(temperature=1.0, seed=1000 + i)
            if i == 1:
                body["n"] = 2
        if i % 4 < 2:
            body.update(logprobs=True, top_logprobs=1)
        out.append(body)
    return out


@dataclass
class Received:
    """What the client of one streamed chat got."""

    status: int = 0
    request_id: str = ""
    text: dict[int, list[str]] = field(default_factory=dict)
    tokens: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    usage: dict[str, int] | None = None
    error: Any = None
    chars: int = 0  # content characters so far, every choice
    first_at: float | None = None
    ended_at: float = 0.0

    def answer(self) -> dict[str, Any]:
        """The answer as compared: bytes of each choice's text, tokens, finishes, usage."""
        return {
            "text": {c: "".join(t).encode() for c, t in sorted(self.text.items())},
            "tokens": dict(sorted(self.tokens.items())),
            "finish": dict(sorted(self.finish.items())),
            "usage": self.usage,
        }


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any], got: Received) -> None:
    """POST ``body`` as a streamed chat and record everything into ``got``."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            got.request_id = response.headers.get("x-request-id", "")
            got.status = response.status_code
            if response.status_code != 200:
                got.error = (await response.aread()).decode(errors="replace")[:300]
                return
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    _chunk(json.loads(line[6:]), got)
    except httpx.HTTPError as exc:
        got.status, got.error = -1, repr(exc)
    finally:
        got.ended_at = time.monotonic()


def _chunk(chunk: dict[str, Any], got: Received) -> None:
    if "error" in chunk:
        got.status, got.error = 599, chunk["error"]
        return
    if chunk.get("usage"):
        got.usage = chunk["usage"]
    for choice in chunk.get("choices", []):
        index = choice["index"]
        content = choice.get("delta", {}).get("content") or ""
        if content:
            got.text.setdefault(index, []).append(content)
            got.chars += len(content)
            got.first_at = got.first_at or time.monotonic()
        entries = (choice.get("logprobs") or {}).get("content") or []
        got.tokens.setdefault(index, []).extend(entry["token"] for entry in entries)
        if choice.get("finish_reason"):
            got.finish[index] = choice["finish_reason"]


async def _all(stack: Stack, requests: list[dict[str, Any]]) -> tuple[list[Received], Any]:
    """Start every request now; returns their records and the task that awaits them."""
    client = client_for(stack, limits=len(requests) + 2)
    got = [Received() for _ in requests]
    streams = [stream_chat(client, body, g) for body, g in zip(requests, got, strict=True)]

    async def run() -> None:
        try:
            await asyncio.gather(*streams)
        finally:
            await client.aclose()

    return got, asyncio.create_task(run())


def _held(stack: Stack, consumer: str) -> set[str]:
    """The request ids of the LLM jobs delivered to ``consumer`` and not acknowledged."""
    stream = f"seedx:jobs:llm:{LLM_MODEL}"
    client = stack.redis_client()
    try:
        if not client.exists(stream):
            return set()
        rows = client.xpending_range(stream, "workers", "-", "+", 1000, consumername=consumer)
        held = set()
        for row in rows:
            for _id, fields in client.xrange(stream, row["message_id"], row["message_id"]):
                held.add(str(json.loads(fields[b"job"])["request_id"]))
        return held
    finally:
        client.close()


def _text(value: str | None) -> str:
    return value or ""


def _first_difference(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    for choice, expected in want["text"].items():
        actual = got["text"].get(choice, b"")
        if actual != expected:
            at = next(
                (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b),
                min(len(actual), len(expected)),
            )
            return {
                "choice": choice,
                "byte": at,
                "got": actual[max(0, at - 8) : at + 8].decode(errors="replace"),
                "want": expected[max(0, at - 8) : at + 8].decode(errors="replace"),
                "lengths": [len(actual), len(expected)],
            }
    keys = [k for k in ("tokens", "finish", "usage") if got[k] != want[k]]
    return {"differs_in": keys}


async def resume(
    stack: Stack, runs: int, streams: int, max_tokens: int = 300, seed: int | None = None
) -> Figures:
    """``runs`` kills of an LLM worker while ``streams`` streamed chats run: when a random one
    of them has received a random share of its answer, the worker generating it is SIGKILLed.
    Every stream is compared with its uninterrupted answer (``kill_points_chars``: what each
    stream the victim held had received then).

    Needs two LLM workers (the other takes the jobs over within a lease); the victim's
    replacement is started after each run and waited for before the next.
    """
    rng = random.Random(seed)
    requests = bodies(streams, max_tokens)
    await asyncio.to_thread(stack.wait_ready)
    reference, task = await _all(stack, requests)
    await asyncio.wait_for(task, stack.config.request_timeout_s + 30)
    bad = [(i, r.status, r.error) for i, r in enumerate(reference) if r.status != 200]
    if bad:
        return {"error": f"reference requests failed: {bad}"}
    wanted = [r.answer() for r in reference]
    lengths = [r.chars for r in reference]
    compared = identical = resumed = resumed_identical = failed = 0
    kill_points: list[int] = []
    differences: list[dict[str, Any]] = []
    for run in range(runs):
        await asyncio.to_thread(stack.wait_ready)
        got, task = await _all(stack, requests)
        # The kill lands at a random character of a random stream (the others are elsewhere).
        target = rng.randrange(len(requests))
        goal = rng.randint(1, max(1, lengths[target] * 9 // 10))
        begun = time.monotonic()
        while got[target].chars < goal and not got[target].ended_at:
            if time.monotonic() - begun > stack.config.request_timeout_s:
                break
            await asyncio.sleep(0.002)
        workers = stack.workers("llm")
        ids = [_text(await asyncio.to_thread(stack.worker_id, w)) for w in workers]
        holds = [await asyncio.to_thread(_held, stack, i) for i in ids]
        victim = max(  # the worker streaming the target (else the one holding most)
            range(len(workers)), key=lambda i: (got[target].request_id in holds[i], len(holds[i]))
        )
        at_kill = [g.chars for g in got]
        await asyncio.to_thread(stack.kill, workers[victim])
        held = await asyncio.to_thread(_held, stack, ids[victim])
        await asyncio.wait_for(task, stack.config.request_timeout_s + 30)
        stack.spawn("llm")  # the replacement (waited for at the next run)
        for i, g in enumerate(got):
            if g.status != 200:
                failed += 1
                differences.append({"run": run, "stream": i, "status": g.status, "error": g.error})
                continue
            was_resumed = g.request_id in held
            same = g.answer() == wanted[i]
            compared += 1
            identical += same
            resumed += was_resumed
            resumed_identical += was_resumed and same
            if was_resumed:
                kill_points.append(at_kill[i])
            if not same:
                difference = _first_difference(g.answer(), wanted[i])
                differences.append({"run": run, "stream": i, "resumed": was_resumed, **difference})
    return {
        "runs": runs,
        "streams_compared": compared,
        "byte_identical": identical,
        "streams_resumed": resumed,
        "resumed_byte_identical": resumed_identical,
        "failed": failed,
        "kill_points_chars": sorted(kill_points),
        "answer_chars": lengths,
        "differences": differences[:8],
    }
