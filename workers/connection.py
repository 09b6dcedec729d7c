"""The Redis client every transport component shares, and how its failures surface.

A command that hits a dropped connection is retried by redis-py with jittered exponential
backoff (``RedisSettings.retry_*``); when the retries are spent the error is re-raised as
:class:`workers.errors.Unavailable` at the public API, so a caller gets a clear 503 instead of a
hang or a raw ``redis`` exception. Long-running loops (worker, reply reader) use :class:`Backoff`
to reconnect forever without hammering a Redis that is restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers.errors import Unavailable
from workers.settings import RedisSettings

logger = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,  # includes BusyLoadingError (Redis is loading its data after a restart)
    RedisTimeoutError,
    ReadOnlyError,  # a replica during failover
    OSError,
)
"""Errors that mean "Redis is unreachable right now", as opposed to a bug in a command."""


def create_redis(settings: RedisSettings) -> Redis:
    """A pooled asyncio client with bounded retries; binary-safe (``decode_responses=False``)."""
    retry = Retry(
        EqualJitterBackoff(cap=settings.retry_backoff_cap_s, base=settings.retry_backoff_base_s),
        settings.retry_attempts,
    )
    client: Redis = Redis.from_url(
        settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=settings.max_connections,
        health_check_interval=settings.health_check_interval_s,
        client_name=settings.client_name,
        decode_responses=False,
        **settings.connection_kwargs(),  # TLS (rediss://)
    )
    return client


@asynccontextmanager
async def unavailable_on_disconnect(action: str) -> AsyncIterator[None]:
    """Turn "Redis unreachable" into :class:`Unavailable` naming what was being done."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        logger.warning("redis unreachable while %s: %s", action, exc)
        raise Unavailable(f"the job store is unreachable while {action}; retry later") from exc


async def sleep_until(event: asyncio.Event, timeout: float) -> None:
    """Sleep ``timeout`` seconds, or less if ``event`` is set meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout)


async def stop_task(task: asyncio.Task[None], timeout: float) -> None:
    """Wait for a loop that was told to stop (by a flag) to return; cancel it only as a fallback.

    Loops doing Redis I/O are stopped by flag rather than by ``Task.cancel``: redis-py can
    swallow a cancellation that lands while a pooled connection is being set up and then block
    on a desynchronized connection, which would hang a shutdown.
    """
    done, _ = await asyncio.wait([task], timeout=timeout)
    if done:
        return
    logger.warning("task %s did not stop within %.1fs; cancelling it", task.get_name(), timeout)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        logger.warning("task %s ignored its cancellation; leaving it", task.get_name())


class Backoff:
    """Jittered exponential delays for loops that must outlive a Redis outage."""

    def __init__(self, cap_s: float, base_s: float = 0.05) -> None:
        self._cap_s = cap_s
        self._base_s = base_s
        self._failures = 0

    def next_delay(self) -> float:
        """The next delay (half fixed, half random, capped), counting one more failure."""
        delay = min(self._cap_s, self._base_s * 2.0**self._failures)
        self._failures = min(self._failures + 1, 32)
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        """Call after a success so the next failure starts small again."""
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last reset."""
        return self._failures
