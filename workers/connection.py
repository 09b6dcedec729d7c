"""The Redis client every transport component shares, and how its failures surface.

A command that hits a dropped connection is retried by redis-py with jittered exponential
backoff (``RedisSettings.retry_*``); when the retries are spent the error is re-raised as
:class:`workers.errors.Unavailable` at the public API, so a caller gets a clear 503 instead of a
hang or a raw ``redis`` exception. Long-running loops (worker, reply reader) use :class:`Backoff`
to reconnect forever without hammering a Redis that is restarting.

A Redis at ``maxmemory`` with ``maxmemory-policy noeviction`` refuses writes with ``-OOM``
(redis-py's :class:`~redis.exceptions.OutOfMemoryError`): that is :class:`StoreFull`, a 503 with
``Retry-After`` at admission, and for a job already running :func:`retry_while_full` retries the
write with backoff until the job's deadline before failing it with that error. Every refusal is
counted in ``seedx_redis_full_refusals_total``.

A Sentinel-managed Redis (``redis+sentinel://`` URL, :func:`workers.settings.parse_sentinel_url`)
gets redis-py's Sentinel client from the same factory, so the gateway and both workers follow a
failover alike: each new connection asks the sentinels for the current master, and a connection
still on a demoted master fails with ``ReadOnlyError`` / a reset, which redis-py turns into a
:class:`~redis.exceptions.ConnectionError` and retries after re-asking the sentinels. While the
sentinels elect a new master (no master known: ``MasterNotFoundError``, also a ConnectionError)
the retries run out and callers see :class:`Unavailable` (503), loops back off; never a 500.

Redis Cluster is refused at start-up (:func:`refuse_cluster`): a serving stack's Redis traffic
fits one primary, and the transport's multi-key scripts (enqueue with its idempotency and
cancellation keys, blob ownership) need every key in one slot, which a cluster does not give.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers.errors import StoreFull, Unavailable
from workers.settings import RedisSettings, SentinelTarget
from workers.startup import StartupError

logger = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,  # includes BusyLoadingError (Redis is loading its data after a restart)
    RedisTimeoutError,
    ReadOnlyError,  # a replica during failover
    OSError,
)
"""Errors that mean "Redis is unreachable right now", as opposed to a bug in a command."""

STORE_FULL_ERRORS: tuple[type[Exception], ...] = (OutOfMemoryError, StoreFull)
"""Errors that mean "Redis is full": it refused a write at ``maxmemory`` (noeviction)."""

REDIS_FULL_REFUSALS = Counter(
    "seedx_redis_full_refusals_total",
    "Writes Redis refused because it is at maxmemory (OOM, maxmemory-policy noeviction).",
)

_T = TypeVar("_T")

_last_full_at: float | None = None  # monotonic time of this process's last OOM refusal


def _note_full() -> None:
    global _last_full_at
    REDIS_FULL_REFUSALS.inc()
    _last_full_at = time.monotonic()


def seconds_since_full() -> float | None:
    """Seconds since Redis last refused a write of this process for want of memory (None:
    never). ``/readyz`` reads it rather than ``INFO memory``: the refusal is the fact itself
    (``used_memory`` reads below ``maxmemory`` again right after one, the refused command's
    buffers freed), and ``INFO`` is not a command the documented ACL user may run."""
    return None if _last_full_at is None else time.monotonic() - _last_full_at


def create_redis(settings: RedisSettings) -> Redis:
    """A pooled asyncio client with bounded retries; binary-safe (``decode_responses=False``).

    For a ``redis+sentinel://`` URL, the client of the master the sentinels name (see the module
    docstring); otherwise a client of the URL's server."""
    retry = Retry(
        EqualJitterBackoff(cap=settings.retry_backoff_cap_s, base=settings.retry_backoff_base_s),
        settings.retry_attempts,
    )
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "max_connections": settings.max_connections,
        "health_check_interval": settings.health_check_interval_s,
        "client_name": settings.client_name,
        "decode_responses": False,
        **settings.connection_kwargs(),  # TLS (rediss://, rediss+sentinel://)
    }
    target = settings.sentinel
    if target is not None:
        return _sentinel_master(target, settings, options)
    client: Redis = Redis.from_url(settings.url, **options)
    return client


class SentinelMasterRedis(Redis):
    """The master's client from redis-py's Sentinel; closing it also closes the connections to
    the sentinels (redis-py leaves them open)."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            for client in self.sentinel_manager.sentinels if self.sentinel_manager else []:
                try:
                    await client.aclose()
                except Exception as exc:  # one that fails to close must not leave the others
                    logger.warning("closing a connection to a sentinel failed: %s", exc)


def _sentinel_master(
    target: SentinelTarget, settings: RedisSettings, options: dict[str, Any]
) -> Redis:
    """A client that asks ``target``'s sentinels for the master at every new connection."""
    tls = {"ssl": True, **settings.connection_kwargs()} if target.tls else {}
    sentinel = Sentinel(
        target.sentinels,
        sentinel_kwargs={
            # one sentinel that does not answer must not stall discovery: the next is asked
            "socket_timeout": settings.connect_timeout_s,
            "socket_connect_timeout": settings.connect_timeout_s,
            # One connection per sentinel, not a pool: discovery is one short command per new
            # master connection, and under a failover's concurrent rediscoveries redis-py's pool
            # of a sentinel client lost track of connections it still held open (found by the
            # failover test: ResourceWarning for unclosed sockets after every client closed).
            "single_connection_client": True,
            "password": settings.sentinel_password,
            **tls,
        },
    )
    client = sentinel.master_for(
        target.master,
        redis_class=SentinelMasterRedis,
        db=target.db,
        username=target.username,
        password=target.password,
        **{**options, "ssl": target.tls},
    )
    assert isinstance(client, SentinelMasterRedis)
    client.sentinel_manager = sentinel
    return client


@asynccontextmanager
async def unavailable_on_disconnect(action: str) -> AsyncIterator[None]:
    """Turn "Redis unreachable" into :class:`Unavailable` naming what was being done."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        logger.warning("redis unreachable while %s: %s", action, exc)
        raise Unavailable(f"the job store is unreachable while {action}; retry later") from exc
    except OutOfMemoryError as exc:
        _note_full()
        logger.warning("redis is full (maxmemory) while %s: %s", action, exc)
        raise StoreFull(
            f"the job store is full (Redis reached its maxmemory) while {action}; retry later"
        ) from exc


async def retry_while_full(
    write: Callable[[], Awaitable[_T]],
    *,
    deadline: float | None,
    action: str,
    backoff_cap_s: float = 1.0,
) -> _T:
    """``write()``, retried with jittered backoff while Redis is full, until ``deadline``
    (epoch seconds; None: no retry); then :class:`StoreFull` naming ``action``.

    For work already accepted (a worker's blob or event write): an OOM may pass as blobs expire
    or requests end, so the job waits for room rather than failing at once; it never waits past
    its deadline, and it never ends silently.
    """
    backoff = Backoff(backoff_cap_s)
    while True:
        try:
            return await write()
        except STORE_FULL_ERRORS as exc:
            if isinstance(exc, OutOfMemoryError):
                _note_full()
            delay = backoff.next_delay()
            remaining = (deadline - time.time()) if deadline is not None else 0.0
            if remaining <= delay:
                logger.error(
                    "redis stayed full while %s (%d tries); giving up: %s",
                    action,
                    backoff.failures,
                    exc,
                )
                raise StoreFull(
                    f"the job store is full (Redis reached its maxmemory): could not finish "
                    f"{action} within the job's deadline ({backoff.failures} tries)"
                ) from exc
            logger.warning("redis is full while %s; retrying in %.2fs", action, delay)
            await asyncio.sleep(delay)


CLUSTER_REFUSED = (
    "Redis Cluster is not supported: a serving stack's Redis traffic fits one primary, and the "
    "transport's multi-key scripts need every key in one slot; point the URL at a standalone "
    "Redis/Valkey (a primary with replicas and Sentinel-style failover is fine)"
)


def refuse_cluster_url(url: str) -> None:
    """:class:`~workers.startup.StartupError` for a URL whose scheme names a cluster
    (``redis+cluster://``, ``redis-cluster://``, ...)."""
    if "cluster" in urlsplit(url).scheme.lower():
        raise StartupError(f"{CLUSTER_REFUSED} (the URL's scheme names a cluster)")


async def refuse_cluster(redis: Redis, url: str | None = None) -> None:
    """Raise :class:`~workers.startup.StartupError` when ``url`` names a cluster or the server
    runs in cluster mode, at start-up rather than at the first multi-key script.

    Asked with ``HELLO`` (no arguments: the connection's context, ``mode`` standalone|cluster,
    nothing switched), not ``INFO cluster``: ``HELLO`` is a command the documented ACL user
    already runs, ``INFO`` is not. Redis unreachable now: nothing is decided (the process
    starts and keeps reconnecting as it always does).
    """
    if url is not None:
        refuse_cluster_url(url)
    try:
        hello: Any = await redis.execute_command("HELLO")  # type: ignore[no-untyped-call]
    except CONNECTION_ERRORS as exc:
        logger.warning("cannot check Redis for cluster mode now (%s); going on", exc)
        return
    if isinstance(hello, list):  # RESP2 without redis-py's callback: a flat list of pairs
        hello = dict(zip(hello[::2], hello[1::2], strict=False))
    mode = hello.get(b"mode", hello.get("mode", b"")) if isinstance(hello, dict) else b""
    if (mode.decode() if isinstance(mode, bytes) else str(mode)) == "cluster":
        raise StartupError(f"{CLUSTER_REFUSED} (the server runs in cluster mode)")


async def sleep_until(event: asyncio.Event, timeout: float) -> None:
    """Sleep ``timeout`` seconds, or less if ``event`` is set meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout)


async def stop_task(task: asyncio.Task[None], timeout: float) -> None:
    """Wait for a loop that was told to stop (by a flag) to return; cancel it only as a fallback.

    Loops doing Redis I/O are stopped by flag rather than by ``Task.cancel``: a cancellation
    can be lost inside redis-py. With a ``socket_timeout`` it sends each command under
    ``asyncio.wait_for``, and up to Python 3.11 ``wait_for`` returns normally when the
    cancellation lands as the write completes (seen: a worker cancelled at its ``XTRIM`` went
    on to block in ``XREADGROUP``, and its loop never ended).
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
