"""The Redis "backbone" scenarios: a Sentinel failover under load, a full Redis, the ACL user
and TLS, each against real ``redis-server`` processes (:mod:`seedx.chaos.redis_servers`).

:func:`failover_load` is the one measurement of a failover: steady chat and image loops against
a gateway (the chaos stack's over HTTP, or an app in a test through ASGI), the master SIGKILLed
after a warm-up, and every request classified by when it was sent and how it ended:

- ``answered``: a 200 with a full answer; ``refused``: a 503 answered between the kill and
  the recovery: admission refused it during the election, when no master takes writes (a
  request sent just before the kill may reach admission after it; a request whose first job
  was accepted waits the election out, :mod:`server.dispatch`, so its 503 would be a loss);
- ``lost``: anything else: accepted and then not answered (a timeout, a 5xx other than a
  refusal, a 503 outside the election, an answer that is not one full answer);
- ``duplicated``: a chat answer that differs from the reference (the answer of the same
  request before the kill): a replayed part delivered twice would show here;
- ``recovery_s``: from the kill to the send time of the first request from which on every
  request sent was answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from seedx.chaos.load import Outcome, answered, post

Figures = dict[str, Any]

CHAT_PATH = "/v1/chat/completions"
IMAGES_PATH = "/v1/images/generations"


def _content(outcome: Outcome) -> str | None:
    try:
        return str(outcome.body["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return None


async def failover_load(
    client: httpx.AsyncClient,
    kill: Callable[[], None],
    *,
    chat: dict[str, Any],
    image: dict[str, Any],
    chat_loops: int = 3,
    image_loops: int = 1,
    warm_s: float = 3.0,
    after_s: float = 12.0,
    timeout_s: float = 60.0,
) -> Figures:
    """Run the loops, call ``kill`` (in a thread) after ``warm_s``, go on ``after_s``; figures
    as in the module docstring (``outcomes`` for a caller that wants to look closer)."""
    outcomes: list[tuple[str, Outcome]] = []
    stop = asyncio.Event()

    async def loop(route: str, path: str, body: dict[str, Any]) -> None:
        while not stop.is_set():
            outcome = await post(client, path, json=body, timeout_s=timeout_s)
            outcomes.append((route, outcome))
            await asyncio.sleep(0.05)

    loops = [asyncio.create_task(loop("chat", CHAT_PATH, chat)) for _ in range(chat_loops)]
    loops += [asyncio.create_task(loop("images", IMAGES_PATH, image)) for _ in range(image_loops)]
    await asyncio.sleep(warm_s)
    killed_at = time.monotonic()
    await asyncio.to_thread(kill)
    await asyncio.sleep(after_s)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*loops), timeout_s + 30)
    return failover_figures(outcomes, killed_at)


def _ok(route: str, outcome: Outcome) -> bool:
    return answered(outcome, images=1 if route == "images" else 0)


def _recovery_s(ordered: list[tuple[str, Outcome]], killed_at: float) -> float:
    """From the kill to the first request sent after the last one that was not answered."""
    failed = [o.started for r, o in ordered if o.started >= killed_at and not _ok(r, o)]
    if not failed:
        return 0.0
    later = [o.started for r, o in ordered if o.started > max(failed) and _ok(r, o)]
    return (min(later) if later else float("nan")) - killed_at


def failover_figures(outcomes: list[tuple[str, Outcome]], killed_at: float) -> Figures:
    """Classify ``(route, outcome)`` pairs around a master killed at ``killed_at``."""
    ordered = sorted(outcomes, key=lambda pair: pair[1].started)
    recovery_s = _recovery_s(ordered, killed_at)

    reference = next((_content(o) for r, o in ordered if r == "chat" and _ok(r, o)), None)
    phases: dict[str, dict[str, int]] = {"before": {}, "during": {}, "after": {}}
    lost: list[dict[str, Any]] = []
    refused = duplicated = 0
    for route, outcome in ordered:
        if outcome.started < killed_at:
            phase = "before"
        elif outcome.started <= killed_at + recovery_s:
            phase = "during"
        else:
            phase = "after"
        status = str(outcome.status)
        phases[phase][status] = phases[phase].get(status, 0) + 1
        if _ok(route, outcome):
            if route == "chat" and _content(outcome) != reference:
                duplicated += 1
        elif outcome.status == 503 and killed_at <= outcome.ended <= killed_at + recovery_s:
            refused += 1
        else:
            lost.append({"route": route, "status": outcome.status, "phase": phase,
                         "body": str(outcome.body)[:160]})  # fmt: skip
    return {
        "requests": len(ordered),
        "accepted": len(ordered) - refused,
        "answered": sum(1 for r, o in ordered if _ok(r, o)),
        "refused_503": refused,
        "lost": len(lost),
        "duplicated": duplicated,
        "recovery_s": round(recovery_s, 2),
        "statuses": phases,
        "lost_examples": lost[:3],
    }
