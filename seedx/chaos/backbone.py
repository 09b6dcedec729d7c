"""The Redis "backbone" scenarios: a Sentinel failover under load, a full Redis, the ACL user
and TLS, each against real ``redis-server`` processes (:mod:`seedx.chaos.redis_servers`).

:func:`load_through` is the one measurement of a disruption: steady chat and image loops against
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
- ``recovery_s``: from the kill to the first answer to a request sent after it and after the
  last request that was not answered (the stack serves new requests again).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from seedx.chaos.load import MARKER, Outcome, answered, chat_body, client_for, post
from seedx.chaos.redis_servers import Backbone
from seedx.chaos.stack import KEY, Stack, free_port, metric_sum

Figures = dict[str, Any]

CHAT_PATH = "/v1/chat/completions"
IMAGES_PATH = "/v1/images/generations"


def _content(outcome: Outcome) -> str | None:
    try:
        return str(outcome.body["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return None


async def load_through(
    client: httpx.AsyncClient,
    disrupt: Callable[[], object],
    *,
    chat: dict[str, Any],
    image: dict[str, Any],
    restore: Callable[[], object] | None = None,
    hold_s: float = 0.0,
    probe: Callable[[], Awaitable[Figures]] | None = None,
    chat_loops: int = 3,
    image_loops: int = 1,
    warm_s: float = 3.0,
    after_s: float = 12.0,
    timeout_s: float = 60.0,
) -> Figures:
    """Run the loops; after ``warm_s`` call ``disrupt`` (in a thread) and start ``probe`` (it
    runs beside the rest; its figures join the result), after ``hold_s`` call ``restore``; go
    on ``after_s``. Figures as in the module docstring, the recovery counted from the
    disruption."""
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
    await asyncio.to_thread(disrupt)
    disrupted_at = time.monotonic()  # once done: a kill may first cut the replica's link
    probing = asyncio.create_task(probe()) if probe is not None else None
    if restore is not None:
        await asyncio.sleep(max(0.0, disrupted_at + hold_s - time.monotonic()))
        await asyncio.to_thread(restore)
    await asyncio.sleep(after_s)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*loops), timeout_s + 30)
    probed = await probing if probing is not None else {}
    return {**failover_figures(outcomes, disrupted_at), **probed}


def _ok(route: str, outcome: Outcome) -> bool:
    return answered(outcome, images=1 if route == "images" else 0)


def _recovery_s(ordered: list[tuple[str, Outcome]], killed_at: float) -> float:
    """From the kill to the first answer to a request sent after the kill and after the last
    request that was not answered: when the stack serves new requests again."""
    failed = [o.started for r, o in ordered if o.started >= killed_at and not _ok(r, o)]
    since = max(failed, default=killed_at)
    later = [o.ended for r, o in ordered if o.started > since and _ok(r, o)]
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


# --- the scenarios of ``seedx bench chaos`` on the backbone stack --------------------------------

CHAT_BODY = chat_body("say something", max_tokens=8, temperature=0)  # greedy: one reference
IMAGE_BODY = {"prompt": f"{MARKER} a red square", "response_format": "b64_json"}


def _backbone(stack: Stack) -> Backbone:
    if not isinstance(stack.redis, Backbone):
        raise RuntimeError("the Redis backbone scenarios need a stack started with backbone=True")
    return stack.redis


LOSE_WRITES_S = 0.5


async def redis_failover(stack: Stack) -> Figures:
    """SIGKILL the master under chat + image load, its replica's link cut ``LOSE_WRITES_S``
    before (the writes of that window are lost with the master, as asynchronous replication
    loses them in production); the set is revived afterwards (the old master rejoins as a
    replica) so the next scenario can fail over again."""
    backbone = _backbone(stack)
    before = metric_sum(await asyncio.to_thread(stack.gateway_metrics), REENQUEUED)
    async with client_for(stack, limits=16) as client:
        figures = await load_through(
            client,
            lambda: backbone.kill_master(LOSE_WRITES_S),
            chat=CHAT_BODY,
            image=IMAGE_BODY,
        )
    after = metric_sum(await asyncio.to_thread(stack.gateway_metrics), REENQUEUED)
    await asyncio.to_thread(backbone.revive)
    return {**figures, "replica_link_cut_s": LOSE_WRITES_S, "reenqueued": after - before}


REENQUEUED = "seedx_lost_jobs_reenqueued_total"
FULL_HOLD_S = 4.0


async def redis_full(stack: Stack) -> Figures:
    """``CONFIG SET maxmemory 1`` on the master for a few seconds under load, then back to
    what it was: refusals are 503 + Retry-After (store_full), nothing accepted is lost, /readyz
    says redis_memory false while full and true again afterwards (how long after)."""
    admin = stack.redis_client()
    (_, limit) = admin.config_get("maxmemory").popitem()
    at: dict[str, float] = {}

    def fill() -> None:
        at["full"] = time.monotonic()
        admin.config_set("maxmemory", 1)

    def restore() -> None:
        admin.config_set("maxmemory", limit)
        at["restored"] = time.monotonic()

    async def probe() -> Figures:
        async with client_for(stack, limits=4) as client:
            refused = await client.post(CHAT_PATH, json=CHAT_BODY, timeout=30)
            during = await client.get("/readyz", timeout=10)
            while "restored" not in at:
                await asyncio.sleep(0.05)
            memory_back_s = ready_back_s = None
            give_up = time.monotonic() + 60
            while (memory_back_s is None or ready_back_s is None) and time.monotonic() < give_up:
                ready = await client.get("/readyz", timeout=10)
                since = round(time.monotonic() - at["restored"], 2)
                if memory_back_s is None and ready.json()["checks"]["redis_memory"]:
                    memory_back_s = since
                if ready_back_s is None and ready.status_code == 200:
                    ready_back_s = since
                await asyncio.sleep(0.1)
        error = refused.json().get("error", {}) if refused.status_code != 200 else {}
        return {
            "full_status": refused.status_code,
            "full_retry_after": refused.headers.get("retry-after"),
            "full_code": error.get("code"),
            "readyz_full": [during.status_code, during.json()["checks"].get("redis_memory")],
            "readyz_after": [ready.status_code, ready.json()["checks"].get("redis_memory")],
            "redis_memory_true_after_restore_s": memory_back_s,
            "readyz_200_after_restore_s": ready_back_s,
        }

    try:
        async with client_for(stack, limits=16) as client:
            figures = await load_through(
                client,
                fill,
                chat=CHAT_BODY,
                image=IMAGE_BODY,
                restore=restore,
                hold_s=FULL_HOLD_S,
                probe=probe,
            )
    finally:
        admin.config_set("maxmemory", limit)
        admin.close()
    held_s = at["restored"] - at["full"]
    figures["recovery_after_restore_s"] = round(figures["recovery_s"] - held_s, 2)
    return figures


def gateway_exit(stack: Stack, url: str, **settings: str) -> Figures:
    """``seedx gateway`` started on ``url`` (RedisSettings overrides by env name): its exit
    code, how long it took, its last line (a start-up refusal must be exit 78 at once)."""
    env = {k: v for k, v in stack.env().items() if not k.startswith("SEEDX_GATEWAY_PORT")}
    env.update({f"SEEDX_GATEWAY_REDIS__{k}": v for k, v in settings.items()})
    env["SEEDX_GATEWAY_API_KEYS"] = f'["{KEY}"]'
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "seedx.cli", "gateway", "--port", str(free_port()),
         "--redis-url", url],
        env=env, capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(stack.config.workdir),
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    return {
        "exit": result.returncode,
        "seconds": round(time.monotonic() - started, 2),
        "message": (lines[-1] if lines else "")[:300],
    }


async def redis_auth(stack: Stack) -> Figures:
    """After the load of the scenarios before it: the ACL LOG of every data server (no
    command of the stack refused to the documented user); a wrong password: exit 78."""
    backbone = _backbone(stack)
    import redis

    entries = 0
    for server in backbone.servers.servers:
        client = redis.Redis(
            port=server.port,
            username="default",
            password=backbone.ADMIN_PASSWORD,
            socket_timeout=2,
            **backbone.servers.client_kwargs(),
        )
        try:
            entries += len(client.acl_log())
        finally:
            client.close()
    wrong = await asyncio.to_thread(gateway_exit, stack, backbone.url_with("not-the-password"))
    return {
        "acl_log_entries": entries,
        "wrong_password": wrong,
        "password_in_message": "not-the-password" in wrong["message"],
    }


async def redis_tls(stack: Stack) -> Figures:
    """Every process of the backbone stack talks TLS (the servers have no plain port): a chat
    and an image answered; a CA that did not sign the servers' certificate: exit 78."""
    backbone = _backbone(stack)
    admin = stack.redis_client()
    try:
        plain_port = admin.config_get("port")["port"]
    finally:
        admin.close()
    async with client_for(stack, limits=4) as client:
        chat = await post(client, CHAT_PATH, json=CHAT_BODY, timeout_s=60)
        image = await post(client, IMAGES_PATH, json=IMAGE_BODY, timeout_s=60)
    wrong = await asyncio.to_thread(
        gateway_exit, stack, backbone.url, SSL_CA_CERTS=str(backbone.tls.other_ca)
    )
    return {
        "url_scheme": backbone.url.split("://")[0],
        "plain_port": plain_port,
        "chat": chat.status,
        "image": image.status,
        "answered": answered(chat) and answered(image, images=1),
        "wrong_ca": wrong,
    }


def plan() -> list[tuple[str, Callable[[Stack], Figures]]]:
    """The backbone scenarios, in the order they run (the ACL LOG is read after the load)."""
    return [
        ("redis_failover", lambda s: asyncio.run(redis_failover(s))),
        ("redis_full", lambda s: asyncio.run(redis_full(s))),
        ("redis_auth", lambda s: asyncio.run(redis_auth(s))),
        ("redis_tls", lambda s: asyncio.run(redis_tls(s))),
    ]
