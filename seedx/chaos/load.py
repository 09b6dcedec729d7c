"""Requests the scenarios send, and what they record about each answer.

Every request carries :data:`MARKER` in its prompt, so the log scenario can tell whether a prompt
reached a log line. Every loop is bounded in count and time, and all traffic goes to the stack's
loopback gateway.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

from seedx.chaos.stack import LLM_MODEL, Stack

MARKER = "chaos-prompt-7f3a"
"""A string in every prompt: it must never appear in a log line at INFO or above."""


def png_bytes(
    width: int = 32, height: int = 32, color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def chat_body(
    text: str = "describe", *, image_url: str | None = None, **extra: Any
) -> dict[str, Any]:
    content: Any = f"{MARKER} {text}"
    if image_url is not None:
        content = [
            {"type": "text", "text": content},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]
    body = {"model": LLM_MODEL, "messages": [{"role": "user", "content": content}], **extra}
    body.setdefault("max_tokens", 16)
    return body


@dataclass
class Outcome:
    """One request: HTTP status (0: no answer in time, -1: transport error), times, body."""

    status: int
    started: float
    ended: float
    body: Any = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


async def post(client: httpx.AsyncClient, path: str, *, timeout_s: float, **kwargs: Any) -> Outcome:
    """POST and record the outcome; a request that outlives ``timeout_s`` is a hang (status 0)."""
    started = time.monotonic()
    try:
        response = await asyncio.wait_for(client.post(path, **kwargs), timeout_s)
    except asyncio.TimeoutError:
        return Outcome(0, started, time.monotonic())
    except httpx.HTTPError as exc:
        return Outcome(-1, started, time.monotonic(), repr(exc))
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Outcome(response.status_code, started, time.monotonic(), body)


def client_for(stack: Stack, *, limits: int = 64, timeout_s: float = 120.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.base_url,
        headers=stack.auth,
        timeout=timeout_s,
        limits=httpx.Limits(max_connections=limits, max_keepalive_connections=limits),
    )


def answered(outcome: Outcome, images: int = 0) -> bool:
    """A 200 whose body holds a full answer (a choice with a message; ``images`` images)."""
    if outcome.status != 200 or not isinstance(outcome.body, dict):
        return False
    if images:
        data = outcome.body.get("data") or []
        return len(data) == images and all(d.get("b64_json") or d.get("url") for d in data)
    choices = outcome.body.get("choices") or []
    return bool(choices) and "message" in choices[0]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank]


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def sustained_slope(points: list[tuple[float, float]]) -> float:
    """The smaller of the slopes of the first and second half of ``points`` (time-ordered).

    Growth that goes on (a leak) shows in both halves; a one-off step shows in one.
    """
    half = len(points) // 2
    if half < 2:
        return slope(points)
    return min(slope(points[:half]), slope(points[half:]))
