"""Overload, crashes, Redis restarts, disconnects, poison jobs and the soak (issue 9, items
1-5 and 11). Each scenario drives the running :class:`~seedx.chaos.stack.Stack` and returns its
figures as a flat dict (the bench prints them; the tests assert the goals on them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

import httpx

from seedx.chaos.load import (
    answered,
    chat_body,
    client_for,
    data_url,
    percentile,
    png_bytes,
    post,
    slope,
    sustained_slope,
)
from seedx.chaos.stack import LLM_MODEL, QUEUE, Stack, alive, metric_sum

Figures = dict[str, Any]


def _decoded(stack: Stack) -> float:
    return metric_sum(stack.gateway_metrics(), "seedx_gateway_images_decoded_total")


async def overload(stack: Stack, route: str, duration_s: float, factor: int = 4) -> Figures:
    """``factor`` x the admission bound of concurrent clients, each looping for ``duration_s``.

    ``route`` chat: chat completions with an input image; images: variations (an uploaded
    image, diffusion only). Every request carries an image, so the gateway's decode counter
    shows whether rejected requests were decoded.
    """
    c = stack.config
    bound = c.llm_max_queue if route == "chat" else c.diffusion_max_queue
    image = png_bytes()
    timeout_s = c.request_timeout_s + 10
    outcomes = []
    decoded_before = _decoded(stack)
    stop_at = time.monotonic() + duration_s

    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            if route == "chat":
                body = chat_body(image_url=data_url(image), max_tokens=24)
                outcome = await post(client, "/v1/chat/completions", json=body, timeout_s=timeout_s)
            else:
                files = {"image": ("in.png", image, "image/png")}
                form = {"size": "64x64", "steps": "2"}
                outcome = await post(
                    client, "/v1/images/variations", files=files, data=form, timeout_s=timeout_s
                )
            outcomes.append(outcome)
            if outcome.status == 429:
                await asyncio.sleep(0.02)  # a polite client; still 4x the bound in flight

    wall_start = time.time()
    async with client_for(stack, limits=bound * factor + 4) as client:
        await asyncio.gather(*(one(client) for _ in range(bound * factor)))
    await asyncio.sleep(0.5)
    served_429 = _logged_latencies_ms(stack, 429, wall_start, time.time())
    decoded = _decoded(stack) - decoded_before
    images = 1 if route == "images" else 0
    ok = sum(1 for o in outcomes if answered(o, images))
    rejected = [o for o in outcomes if o.status == 429]
    return {
        "requests": len(outcomes),
        "ok_200": ok,
        "rejected_429": len(rejected),
        "share_200_or_429": (ok + len(rejected)) / max(1, len(outcomes)),
        "other": sorted({o.status for o in outcomes} - {200, 429}),
        "hung": sum(1 for o in outcomes if o.status == 0),
        "lost": sum(1 for o in outcomes if o.status == 200 and not answered(o, images)),
        "p99_time_to_429_ms": percentile(served_429, 0.99),
        "p99_time_to_429_client_ms": percentile([o.seconds for o in rejected], 0.99) * 1000,
        "images_decoded_for_rejected": max(0, int(decoded) - ok),
    }


_LOGGED = re.compile(r"-> (\d{3}) in ([0-9.]+) ms")


def _logged_latencies_ms(stack: Stack, status: int, since: float, until: float) -> list[float]:
    """The gateway's own request times (its INFO line per request) for one status."""
    values = []
    for line in stack.gateway.log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        match = _LOGGED.search(str(record.get("msg", "")))
        if match and int(match.group(1)) == status and since <= record.get("ts", 0) <= until:
            values.append(float(match.group(2)))
    return values


async def _stream_chat(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """A streamed chat: (status, {text, finishes, completion_tokens})."""
    text = []
    seen: dict[str, Any] = {"finishes": 0, "completion_tokens": None}
    body = {**body, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, seen
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return 599, {**seen, "error": chunk["error"]}
            if chunk.get("usage"):
                seen["completion_tokens"] = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                content = choice.get("delta", {}).get("content") or ""
                text.append(content)
                seen["deltas"] = seen.get("deltas", 0) + bool(content)
                seen["finishes"] += bool(choice.get("finish_reason"))
    seen["text"] = "".join(text)
    return 200, seen


def _replayed(answer: dict[str, Any]) -> bool:
    """Whether a streamed answer shows a replay: more text deltas than tokens, or two endings.

    A reclaimed job is generated again from its first token. Each forwarded text delta carries
    at least one token, so were the replay forwarded, the client would count more content
    deltas than the answer's ``completion_tokens`` (which count one attempt), or a second
    ``finish_reason``.
    """
    used = answer.get("completion_tokens") or 0
    return answer["finishes"] != 1 or answer.get("deltas", 0) > used


async def _wait_for(condition: Any, timeout_s: float, interval_s: float = 0.02) -> float | None:
    """Seconds until ``condition()`` holds, or None after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await asyncio.to_thread(condition):
            return time.monotonic() - started
        await asyncio.sleep(interval_s)
    return None


async def kill_worker(stack: Stack, stage: str, jobs: int) -> Figures:
    """SIGKILL one of two workers of ``stage`` while it runs jobs; the other finishes them.

    Chat answers are streamed and compared with the same greedy request answered after the
    crash (a replayed delta would show up as a difference); image answers must carry exactly
    one image each. Recovery: from the kill until the last request in flight is answered.
    The victim's own child processes (vLLM's engine core and worker) must end by themselves:
    an orphan would keep the model's memory from the replacement.
    """
    kind = "llm" if stage == "llm" else "diffusion"
    # No more jobs than the stage's queue admits: more would measure admission, not recovery.
    bound = stack.config.llm_max_queue if kind == "llm" else stack.config.diffusion_max_queue
    jobs = min(jobs, bound)
    await asyncio.to_thread(stack.wait_ready)
    victim = stack.workers(kind)[0]
    victim_id = await asyncio.to_thread(stack.worker_id, victim)
    results: list[tuple[int, Any]] = []
    killed_at = 0.0
    ended: list[float] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        if stage == "llm":
            body = chat_body(f"story {i}", max_tokens=600, stream=True)
            results.append(await _stream_chat(client, body))
        else:
            body = {"prompt": f"chaos-prompt-7f3a {i}", "size": "64x64", "steps": 10, "seed": i}
            outcome = await post(client, "/v1/images/generations", json=body, timeout_s=120)
            results.append((outcome.status, outcome))
        ended.append(time.monotonic())

    async with client_for(stack, limits=jobs + 2) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(jobs)]
        waited = await _wait_for(lambda: stack.pending(stage, victim_id) > 0, 60)
        in_flight = await asyncio.to_thread(stack.pending, stage, victim_id)
        descendants = await asyncio.to_thread(stack.kill, victim)
        killed_at = time.monotonic()
        orphans_end = asyncio.create_task(_wait_for(lambda: not alive(descendants), 30, 0.1))
        await asyncio.wait_for(asyncio.gather(*tasks), 180)
        orphans_gone_s = await orphans_end
        if stage == "llm":
            duplicates = sum(1 for status, seen in results if status == 200 and _replayed(seen))
        else:
            duplicates = sum(
                1 for status, o in results if status == 200 and len(o.body.get("data", [])) != 1
            )
    ok = sum(1 for status, _ in results if status == 200)
    stack.spawn(kind)  # a replacement (not awaited: later scenarios wait when they need two)
    return {
        "requests": jobs,
        "in_flight_on_victim": in_flight if waited is not None else 0,
        "ok_200": ok,
        "lost": jobs - ok,
        "duplicates_visible": duplicates,
        "recovery_s": max(ended) - killed_at if ended else float("nan"),
        "child_processes": len(descendants),
        "orphans_left": len(alive(descendants)),
        "orphans_gone_after_s": orphans_gone_s if orphans_gone_s is not None else float("nan"),
        "statuses": sorted({status for status, _ in results}),
        "streams": [
            {k: v for k, v in seen.items() if k != "text"}
            for status, seen in results
            if stage == "llm" and isinstance(seen, dict)
        ],
    }


async def redis_restart(stack: Stack, down_s: float = 3.0, after_s: float = 8.0) -> Figures:
    """Stop Redis for ``down_s`` under a steady chat load; when do answers come back?"""
    outcomes = []
    times: dict[str, float] = {}
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            outcome = await post(
                client, "/v1/chat/completions", json=chat_body(max_tokens=8), timeout_s=30
            )
            outcomes.append(outcome)
            await asyncio.sleep(0.05)

    async with client_for(stack, limits=8) as client:
        loops = [asyncio.create_task(client_loop(client)) for _ in range(4)]
        await asyncio.sleep(2.0)
        times["down"] = time.monotonic()
        await asyncio.to_thread(stack.redis.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(stack.redis.start)
        times["back"] = time.monotonic()
        await asyncio.sleep(after_s)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), 60)
    back = times["back"]
    during = [o for o in outcomes if times["down"] <= o.ended <= back]
    after_ok = [o.ended - back for o in outcomes if o.started >= back and o.status == 200]
    recovered_at = min(after_ok) if after_ok else float("nan")
    late_failures = [
        o.status for o in outcomes if o.started >= back + (recovered_at or 0) and o.status != 200
    ]
    return {
        "requests": len(outcomes),
        "during_outage": {
            str(s): sum(1 for o in during if o.status == s)
            for s in sorted({o.status for o in during})
        },
        "hung": sum(1 for o in outcomes if o.status == 0),
        "recovery_s": recovered_at,
        "failures_after_recovery": len(late_failures),
        "statuses": sorted({o.status for o in outcomes}),
    }


async def disconnect_stream(stack: Stack) -> Figures:
    """Leave a streamed chat after a few deltas: until when does the LLM worker work on it?"""
    llm = stack.workers("llm")

    def tokens() -> float:
        return sum(
            metric_sum(stack.worker_metrics(p), "seedx_llm_inter_token_latency_seconds_count")
            for p in llm
        )

    async with client_for(stack) as client:
        body = chat_body("a very long story", max_tokens=1500, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 5:
                    break
            at_disconnect = await asyncio.to_thread(tokens)
        left = time.monotonic()  # the connection is closed on leaving the block
    stopped = await _wait_for(lambda: stack.pending("llm") == 0, 30)
    await asyncio.sleep(0.5)
    wasted = await asyncio.to_thread(tokens) - at_disconnect
    _ = left
    return {"stop_s": stopped if stopped is not None else float("nan"), "wasted_tokens": wasted}


async def disconnect_denoise(stack: Stack, steps: int = 60) -> Figures:
    """Leave an image request while it is being denoised: steps run after the client left."""
    workers = stack.workers("diffusion")

    def steps_done() -> float:
        return sum(
            metric_sum(stack.worker_metrics(p), "seedx_diffusion_step_seconds_count")
            for p in workers
        )

    before = await asyncio.to_thread(steps_done)
    async with client_for(stack) as client:
        body = {"prompt": "chaos-prompt-7f3a long", "size": "64x64", "steps": steps}
        task = asyncio.create_task(client.post("/v1/images/generations", json=body))
        started = await _wait_for(lambda: steps_done() >= before + 3, 60, interval_s=0.05)
        task.cancel()  # closes the connection mid-denoise
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await task
    at_disconnect = await asyncio.to_thread(steps_done)
    stopped = await _wait_for(lambda: stack.pending("diffusion") == 0, 30)
    await asyncio.sleep(0.5)
    wasted = await asyncio.to_thread(steps_done) - at_disconnect
    return {
        "denoising_when_left": started is not None,
        "stop_s": stopped if stopped is not None else float("nan"),
        "wasted_steps": wasted,
        "steps_requested": steps,
    }


def _poison_job(reply_to: str) -> bytes:
    from workers.protocol import ChatJob, ChatMessage, TextPart, new_id

    job = ChatJob(
        job_id=new_id(),
        request_id=new_id(),
        trace_id="poison",
        model=LLM_MODEL,
        deadline=time.time() + 60,
        created_at=time.time(),
        reply_to=reply_to,
        messages=(ChatMessage(role="user", content=(TextPart(text="poison"),)),),
    )
    return job.model_dump_json().encode()


def _plant_poison(stack: Stack, reply_to: str) -> tuple[str, bytes]:
    """Queue a job whose every delivery so far died with its worker (``max_deliveries`` of
    them, by ghost consumers that never acknowledge), exactly as a job that crashes workers."""
    stream = f"seedx:jobs:llm:{LLM_MODEL}"
    client = stack.redis_client()
    try:
        pipe = client.pipeline(transaction=True)
        pipe.xadd(stream, {b"job": _poison_job(reply_to)})
        pipe.xreadgroup("workers", "ghost-1", {stream: ">"}, count=1)
        entry_id, read = pipe.execute()
        assert read, "the poison job was not delivered to the ghost"
        lease_ms = int(float(QUEUE["LEASE_S"]) * 1000)
        client.xclaim(
            stream, "workers", "ghost-2", 0, [entry_id], idle=lease_ms * 2,
            retrycount=int(QUEUE["MAX_DELIVERIES"]),
        )  # fmt: skip
        return entry_id.decode(), entry_id
    finally:
        client.close()


async def poison(stack: Stack, others: int = 12) -> Figures:
    """A job that killed ``max_deliveries`` workers is dead-lettered; other traffic is served."""
    reply_to = "seedx:replies:chaos-poison"
    entry, _ = await asyncio.to_thread(_plant_poison, stack, reply_to)
    started = time.monotonic()
    # At most half the LLM queue's bound in flight: the others must all be admitted, so what
    # is measured is the poison's effect on them, not admission control.
    lanes = asyncio.Semaphore(max(1, stack.config.llm_max_queue // 2))

    async def other(client: httpx.AsyncClient) -> Any:
        async with lanes:
            return await post(
                client, "/v1/chat/completions", json=chat_body(max_tokens=8), timeout_s=60
            )

    async with client_for(stack) as client:
        results = await asyncio.gather(*(other(client) for _ in range(others)))

    def terminal() -> str | None:
        client = stack.redis_client()
        try:
            for _id, fields in client.xrange(reply_to):
                event = json.loads(fields[b"e"])["event"]
                if event["type"] in ("failed", "done"):
                    return str(event.get("error", {}).get("code", event["type"]))
            return None
        finally:
            client.close()

    code = None
    waited = await _wait_for(lambda: terminal() is not None, 30, interval_s=0.1)
    if waited is not None:
        code = await asyncio.to_thread(terminal)
    client = stack.redis_client()
    try:
        letters = [f for _id, f in client.xrange("seedx:dead") if f[b"entry_id"].decode() == entry]
    finally:
        client.close()
    return {
        "dead_lettered": len(letters) == 1,
        "deliveries": int(letters[0][b"deliveries"]) if letters else 0,
        "requester_told": code,
        "seconds_to_dead_letter": time.monotonic() - started if waited is not None else None,
        "others_ok": sum(1 for o in results if answered(o)),
        "others": others,
    }


async def soak(stack: Stack, requests: int, settle_s: float) -> Figures:
    """``requests`` image generations (2 at a time): RSS slope per process, Redis memory.

    The first fifth warms up: fresh processes grow their allocator arenas and bounded caches,
    and the first jobs create Redis' streams, groups and scripts; none of that is a leak, so
    the Redis baseline and the RSS samples start after it. ``rss_sustained_slope`` is the smaller
    of the slopes of the two halves of the samples: a leak grows in both, while an allocator
    taking one more multi-MiB arena is a single step that lands in one half only.

    Every prompt has the same length (a fixed-width counter), so the LLM engine's steps repeat
    the same few batch token counts, which the warm-up meets: vLLM's CPU backend compiles and
    keeps a oneDNN kernel for each count it has not met before (a bounded cache of ~2 MiB steps,
    docs/deploy.md), and a prompt one digit longer at request 100 would add new counts mid-soak.
    """
    client_redis = stack.redis_client()
    baseline = int(client_redis.info("memory")["used_memory"])
    samples: dict[str, list[tuple[float, float]]] = {p.name: [] for p in stack.procs if p.alive}
    statuses: dict[int, int] = {}
    issued = 0
    every = max(1, requests // 20)
    warmup = requests // 5

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal issued, baseline
        while issued < requests:
            index = issued
            issued += 1
            if index == warmup:
                baseline = int(client_redis.info("memory")["used_memory"])
            if index >= warmup and index % every == 0:
                for proc in stack.procs:
                    if proc.name in samples and proc.alive:
                        samples[proc.name].append((index, stack.rss_bytes(proc)))
            prompt = f"chaos-prompt-7f3a soak {index:06d}"  # one length: see the docstring
            body = {"prompt": prompt, "size": "64x64", "steps": 1}
            outcome = await post(client, "/v1/images/generations", json=body, timeout_s=60)
            status = outcome.status if answered(outcome, images=1) or outcome.status != 200 else -2
            statuses[status] = statuses.get(status, 0) + 1

    started = time.monotonic()
    async with client_for(stack, limits=8) as client:
        await asyncio.gather(*(one(client) for _ in range(2)))  # below every queue bound
    elapsed = time.monotonic() - started
    after = int(client_redis.info("memory")["used_memory"])
    settled = await _wait_for(
        lambda: int(client_redis.info("memory")["used_memory"]) <= baseline + 256 * 1024,
        settle_s,
        interval_s=1.0,
    )
    final = int(client_redis.info("memory")["used_memory"])
    client_redis.close()
    return {
        "requests": requests,
        "ok_200": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "requests_per_s": requests / elapsed,
        "rss_slope_bytes_per_request": {name: slope(p) for name, p in samples.items()},
        "rss_sustained_slope_bytes_per_request": {
            name: sustained_slope(p) for name, p in samples.items()
        },
        "rss_mib": {n: p[-1][1] / 2**20 for n, p in samples.items() if p},
        "rss_mib_points": {n: [round(y / 2**20, 1) for _, y in p] for n, p in samples.items()},
        "redis_used_memory": {"before": baseline, "after_soak": after, "after_ttls": final},
        "redis_back_to_baseline_s": settled,
    }
