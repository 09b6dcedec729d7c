"""The stack on a real ``redis-server`` with the ACL user of docs/deploy.md, and over TLS.

A gateway app and real worker loops (FAKE handlers, as in ``test_gateway_redis``) run a chat and
an image request as user ``seedx`` with exactly the ACL rules the docs give; the ACL LOG must stay
empty afterwards, so a command the list lacks fails the test even where the stack would swallow
the refusal. The same round trip runs over TLS with a CA made here. A wrong password or a wrong CA
makes ``seedx gateway`` exit 78 at once with one line naming the cause.

Needs Debian's ``redis-server`` (7.0+, built with TLS); skipped without it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from seedx.chaos import redis_servers
from seedx.chaos.redis_servers import Tls, make_tls
from tests.integration.conftest import fast_queue_settings, fast_redis_settings, free_port
from tests.integration.gateway.test_gateway_redis import (
    CHAT,
    KEY,
    gateway_and_workers,
)
from workers.settings import RedisSettings

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server")

PASSWORD = "s3cret-Pa55word"
ADMIN_PASSWORD = "admin-Pa55word"


def documented_acl() -> str:
    """The ``user seedx ...`` line of docs/deploy.md, with PASSWORD filled in."""
    return redis_servers.documented_acl(PASSWORD)


class RedisServer:
    """``redis-server`` on a free port with the admin user ``default`` and the ACL ``acl``."""

    def __init__(self, folder: Path, acl: str, tls: Tls | None = None) -> None:
        self.tls = tls
        admin = f"user default on >{ADMIN_PASSWORD} ~* &* +@all"
        try:
            self._server = redis_servers.RedisServer(
                folder, redis_servers.plain_config(admin, acl, tls=tls)
            )
        except redis_servers.RedisServerError as exc:
            pytest.fail(str(exc))
        self.port = self._server.port

    def url(self, user: str = "seedx", password: str = PASSWORD) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/0"

    def settings(
        self, user: str = "seedx", password: str = PASSWORD, **extra: Any
    ) -> RedisSettings:
        tls = {} if self.tls is None else {"ssl_ca_certs": str(self.tls.ca)}
        return fast_redis_settings(self.url(user, password), **tls, **extra)

    def admin(self) -> Redis:
        return Redis.from_url(
            self.url("default", ADMIN_PASSWORD), **self.settings().connection_kwargs()
        )

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", documented_acl())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tls_server(tmp_path: Path, tls: Tls) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", documented_acl(), tls)
    try:
        yield server
    finally:
        server.close()


async def round_trip(server: RedisServer, timeout_s: float = 10) -> list[str]:
    """Chat (plain and streamed), an image by URL, /readyz through gateway and workers as
    ``seedx``; returns what went wrong (HTTP failures, then the ACL LOG's refusals)."""
    redis_settings = server.settings(client_name="seedx-acl-test")
    queue = fast_queue_settings()
    problems: list[str] = []
    async with gateway_and_workers(redis_settings, queue, timeout_s) as c:
        deadline = time.monotonic() + 10
        while (await c.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the workers' first heartbeats
        answer = await c.post("/v1/chat/completions", json=CHAT)
        if answer.status_code != 200 or "w0 w1 w2" not in answer.text:
            problems.append(f"chat: {answer.status_code} {answer.text[:200]}")
        streamed = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
        if not streamed.text.rstrip().endswith("data: [DONE]"):
            problems.append(f"stream: {streamed.text[-200:]}")
        image = await c.post(
            "/v1/images/generations", json={"prompt": "x", "response_format": "url"}
        )
        if image.status_code != 200:
            problems.append(f"image: {image.status_code} {image.text[:200]}")
        else:
            content = await c.get(image.json()["data"][0]["url"])
            if content.status_code != 200:
                problems.append(f"image url: {content.status_code}")
        # A job that outlives a heartbeat (its lease is touched), then cancelled.
        slow = {**CHAT, "messages": [{"role": "user", "content": "slow"}]}
        task = asyncio.create_task(c.post("/v1/chat/completions", json=slow))
        await asyncio.sleep(queue.heartbeat_interval_s * 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ready = await c.get("/readyz")
        if ready.status_code != 200:
            problems.append(f"readyz: {ready.status_code} {ready.text[:200]}")
        await asyncio.sleep(queue.trim_interval_s * 3)  # trims, reclaims
    admin = server.admin()
    try:
        log = await admin.acl_log()
    finally:
        await admin.aclose()
    problems += [f"ACL refused {entry['object']!r} ({entry['reason']})" for entry in log]
    return problems


async def test_round_trip_as_the_documented_acl_user(acl_server: RedisServer) -> None:
    assert await round_trip(acl_server) == []


async def test_a_command_missing_from_the_acl_fails_the_round_trip(tmp_path: Path) -> None:
    acl = documented_acl().replace(" +xack", "")
    server = RedisServer(tmp_path / "redis", acl)
    try:
        problems = await round_trip(server, timeout_s=2)
    finally:
        server.close()
    assert any("'xack'" in problem for problem in problems), problems


async def test_round_trip_over_tls(tls_server: RedisServer) -> None:
    assert await round_trip(tls_server) == []


def run_gateway(
    url: str, tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {
        **os.environ,
        "SEEDX_GATEWAY_API_KEYS": f'["{KEY}"]',
        "SEEDX_GATEWAY_REDIS__RETRY_ATTEMPTS": "10",  # the start-up check must not use them
        **env,
    }
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seedx.cli",
            "gateway",
            "--port",
            str(free_port()),
            "--redis-url",
            url,
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    return result, time.monotonic() - started


def test_wrong_password_exits_78_naming_authentication(
    acl_server: RedisServer, tmp_path: Path
) -> None:
    result, elapsed = run_gateway(acl_server.url(password="wrong-password"), tmp_path)
    assert result.returncode == 78, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(r"seedx gateway: error: .*refused authentication", last), result.stderr
    assert "wrong-password" not in result.stderr
    assert elapsed < 15


def test_wrong_ca_exits_78_naming_the_certificate(
    tls_server: RedisServer, tls: Tls, tmp_path: Path
) -> None:
    result, elapsed = run_gateway(
        tls_server.url(), tmp_path, SEEDX_GATEWAY_REDIS__SSL_CA_CERTS=str(tls.other_ca)
    )
    assert result.returncode == 78, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "seedx gateway: error: TLS to Redis" in last, result.stderr
    assert "certificate verify failed" in last, result.stderr
    assert elapsed < 15


async def test_the_lag_repair_runs_as_the_documented_user_and_an_older_acl_only_warns(
    acl_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``repair_lag`` (the workers' trim, after a failover left a stale lag counter) needs
    ``+xgroup|setid``, which the documented user has; an ACL written before it was documented
    makes it log a warning and return, never stop a worker's trim."""
    from workers import keys
    from workers.queue import repair_lag

    stream = keys.job_stream("llm", "acl-test")

    async def stale_counter(admin: Redis) -> None:
        await admin.xgroup_create(stream, keys.WORKER_GROUP, id="$", mkstream=True)
        await admin.xadd(stream, {"job": "x"})
        await admin.xreadgroup(keys.WORKER_GROUP, "w", {stream: ">"}, count=1)
        await admin.xtrim(stream, maxlen=0)
        await admin.execute_command(
            "XGROUP", "SETID", stream, keys.WORKER_GROUP, "$", "ENTRIESREAD", 0
        )

    older = RedisServer(tmp_path / "older", documented_acl().replace(" +xgroup|setid", ""))
    try:
        for server, repaired in ((acl_server, 0), (older, None)):
            admin = server.admin()
            client = Redis.from_url(server.url())
            try:
                await stale_counter(admin)
                assert await repair_lag(client, stream) == repaired
            finally:
                await admin.aclose()
                await client.aclose()
    finally:
        older.close()
    assert "cannot repair the stale lag counter" in caplog.text
