"""The gateway unit tests' other backend: the real transport on a real Redis, scripted workers.

:class:`RedisScriptedBackend` *is* the gateway's :class:`server.backend.RedisBackend` (so the
app also keeps its Responses store in Redis), on a Redis database leased by this test session
and flushed before every test. The stage scripts of :mod:`tests.unit.server.fakes` run inside
real :class:`workers.worker.Worker` loops consuming the real job streams: consumer groups,
``Started``/``Done`` and acknowledgements by ``workers.execution``, events through
``ReplyWriter`` to this gateway's reply stream and its one ``ReplyReader``, heartbeats the
gateway's directory reads, cancellation flags the worker polls, blobs in Redis. A fake can then
no longer hide a transport contract (issue 21: two jobs with one ``job_id`` were accepted by the
fake and refused by the real reader).

It offers the surface the scripts and tests use on :class:`~tests.unit.server.fakes.FakeBackend`:
the script knobs (``scripts``, ``llm_text``, ...), ``jobs``/``jobs_of``/``cancelled`` (recorded
around the real ``submit``/``cancel``), ``cancelled_event`` (set when the worker loop stops the
job: a cancellation that went through Redis, or its deadline), ``serve`` (starts a worker),
``workers`` (read from the heartbeat keys; assigning a shorter list deletes the others' keys, as
a Redis restart or a dead worker does, while the worker goes on consuming as the fake's scripts
do) and ``blobs.data``/``blobs.released``. The fake's scripted refusals and outages
(``loads``, ``submit_error``, ``connected``, ``redis_up``, ``last_outage``) have no equivalent:
setting one raises, and tests that need them run on the fake only (``conftest.FAKE_ONLY``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
from redis.asyncio import Redis

from server.backend import Blobs, EventStream, RedisBackend
from tests.unit.server.fakes import Script, diffusion_script, llm_script
from workers import keys
from workers.blobs import BlobStore
from workers.connection import create_redis
from workers.handler import JobContext, close_events
from workers.heartbeat import WorkerRegistry
from workers.protocol import Event, Job, Started, WorkerInfo, new_id
from workers.settings import QueueSettings, RedisSettings
from workers.transport import Transport
from workers.worker import Worker

logger = logging.getLogger(__name__)

QUEUE_SETTINGS = QueueSettings(
    # Real leases and a heartbeat slower than any test: a worker dropped from ``workers`` stays
    # unlisted for the rest of its test, and a slow CI machine never loses a lease.
    lease_s=30.0,
    heartbeat_interval_s=15.0,
    # Short blocking reads: a stop (end of test) is noticed within 50 ms.
    block_s=0.05,
    reconnect_backoff_cap_s=0.2,
    shutdown_grace_s=0.5,
)

WORKER_CAPACITY = 4
"""Jobs one scripted worker runs at once (as the fake's ``serve`` advertises)."""

FAKE_ONLY_KNOBS = frozenset({"loads", "submit_error", "connected", "redis_up", "last_outage"})


def redis_settings(url: str) -> RedisSettings:
    """Connection settings that give up quickly instead of hanging a test."""
    return RedisSettings(
        url=url,
        socket_timeout_s=5.0,
        connect_timeout_s=1.0,
        retry_attempts=2,
        retry_backoff_base_s=0.02,
        retry_backoff_cap_s=0.1,
        max_connections=64,
    )


class SyncBlobView(MutableMapping[str, bytes]):
    """``FakeBlobs.data`` for real Redis: the blob keys of the database, read synchronously.

    ``key in data``, ``data == {}`` and ``data.clear()`` (every blob's TTL passed) act on
    Redis itself; the owner sets are left alone, as they outlive their blobs in Redis too.
    """

    def __init__(self, client: sync_redis.Redis, ttl_s: float) -> None:
        self._client = client
        self._ttl_ms = int(ttl_s * 1000)

    def _keys(self) -> list[str]:
        found = self._client.scan_iter(match=f"{keys.BLOB_PREFIX}*", count=1000)
        return sorted(key.decode() for key in cast(Iterator[bytes], found))

    def __getitem__(self, key: str) -> bytes:
        value = self._client.get(key) if key.startswith(keys.BLOB_PREFIX) else None
        if value is None:
            raise KeyError(key)
        return bytes(cast(bytes, value))

    def __setitem__(self, key: str, value: bytes) -> None:
        self._client.set(key, value, px=self._ttl_ms)

    def __delitem__(self, key: str) -> None:
        if not self._client.delete(key):
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self._client.exists(key))

    def clear(self) -> None:
        found = self._keys()
        if found:
            self._client.delete(*found)


class RecordingBlobStore(BlobStore):
    """The real ``BlobStore``, recording the owners released (``FakeBlobs.released``)."""

    def __init__(self, redis: Redis, settings: QueueSettings, client: sync_redis.Redis) -> None:
        super().__init__(redis, settings)
        self.released: list[str] = []
        self.data = SyncBlobView(client, settings.blob_ttl_s)

    async def release(self, owner: str) -> int:
        self.released.append(owner)
        return await super().release(owner)


@dataclass
class _Running:
    worker: Worker
    task: asyncio.Task[None]
    first_beat: float
    """``heartbeat_at`` of the heartbeat ``serve`` wrote for it."""


class RedisScriptedBackend(RedisBackend):
    """See the module docstring; :meth:`start`, :meth:`serve` workers, :meth:`settle`, and at
    the end :meth:`shutdown` (what the ``backend`` fixture does)."""

    def __init__(self, url: str, client: sync_redis.Redis) -> None:
        self._redis_settings = redis_settings(url)
        super().__init__(Transport.connect(self._redis_settings, QUEUE_SETTINGS))
        self._client = client
        self._closed = False
        self._started = False
        # the workers' pool; the scripts' blobs go through it too (they run in the workers)
        self._world = create_redis(self._redis_settings)
        self._blobs = RecordingBlobStore(self._world, QUEUE_SETTINGS, client)
        self._registry = WorkerRegistry(self._world, QUEUE_SETTINGS)
        self._running: list[_Running] = []
        self._cancel_events: dict[str, asyncio.Event] = {}
        # the script knobs, as on FakeBackend
        self.scripts: dict[str, Script] = {"llm": llm_script, "diffusion": diffusion_script}
        self.llm_text: tuple[str, ...] = ("Hello", " world")
        self.llm_boxes: tuple[Any, ...] = ()
        self.llm_images = 0
        self.token_delay_s = 0.0
        self.image_delay_s = 0.0
        # what the gateway did, as on FakeBackend
        self.jobs: list[Job] = []
        self.cancelled: list[str] = []
        self.received: list[Job] = []
        """Every job as a worker decoded it from its stream."""
        self._sealed = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name in FAKE_ONLY_KNOBS:
            raise AttributeError(
                f"{name!r} is a FakeBackend knob with no Redis equivalent: "
                "list the test in tests/unit/server/conftest.py FAKE_ONLY"
            )
        if getattr(self, "_sealed", False) and not hasattr(self, name):
            raise AttributeError(f"RedisScriptedBackend has no {name!r} (a FakeBackend knob?)")
        super().__setattr__(name, value)

    # --- the gateway's side: the real RedisBackend, recorded ------------------------------------
    @property
    def blobs(self) -> Blobs:
        return self._blobs

    async def start(self) -> None:
        """Start the reply reader once: the fixture starts it (an app a test drives without
        its lifespan is answered too), and every app's lifespan calls this again."""
        if not self._started:
            self._started = True
            await super().start()

    async def close(self) -> None:
        """An app's lifespan ended: the transport stays up, as the fake does, since a test may
        run several apps on one backend; :meth:`shutdown` closes it."""

    async def _close_transport(self) -> None:
        if not self._closed:
            self._closed = True
            await super().close()

    async def submit(self, job: Job) -> EventStream:
        stream = await super().submit(job)
        self.jobs.append(job)
        return stream

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        await super().cancel(job_id)

    def jobs_of(self, kind: str) -> list[Job]:
        return [job for job in self.jobs if job.kind == kind]

    def cancelled_event(self, job_id: str) -> asyncio.Event:
        """Set once the worker loop has stopped ``job_id`` (cancelled through Redis, or late)."""
        return self._cancel_events.setdefault(job_id, asyncio.Event())

    # --- the workers ------------------------------------------------------------------------------
    def serve(self, stage: keys.Stage, model: str) -> None:
        """Start a worker of ``stage`` for ``model`` running the stage's script.

        Its first heartbeat is written before this returns (synchronously), so the gateway's
        next directory read lists it, as the fake's would.
        """
        worker = Worker(
            self._world,
            QUEUE_SETTINGS,
            stage=stage,
            model=model,
            handler=self._handle,
            capacity=WORKER_CAPACITY,
            worker_id=f"{stage}-{model}-{len(self._running)}-{new_id()[:6]}",
        )
        info = worker.info()
        pipe = self._client.pipeline(transaction=False)
        self._registry.publish_in(cast(Any, pipe), info)  # the same keys, on the sync client
        pipe.execute()
        task = asyncio.create_task(worker.run(), name=f"scripted-worker:{worker.worker_id}")
        self._running.append(_Running(worker, task, info.heartbeat_at))

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until every worker has written its own first heartbeat.

        Until then a worker's loop may still write it, after a test dropped the worker from
        ``workers``; later ones are ``heartbeat_interval_s`` away.
        """
        waiting = {r.worker.worker_id: r.first_beat for r in self._running}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while waiting:
            values = await self._world.mget([keys.worker_key(w) for w in waiting])
            for worker_id, value in zip(list(waiting), values, strict=True):
                if (
                    value
                    and WorkerInfo.model_validate_json(value).heartbeat_at > waiting[worker_id]
                ):
                    del waiting[worker_id]
            if waiting and asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"workers {sorted(waiting)} wrote no heartbeat in {timeout_s}s")
            await asyncio.sleep(0.005)

    @property
    def workers(self) -> tuple[WorkerInfo, ...]:
        """The workers the heartbeat keys list now (what the gateway's directory reads)."""
        members = cast(list[bytes], self._client.zrange(keys.WORKER_INDEX, 0, -1))
        if not members:
            return ()
        values = cast(
            list[bytes | None], self._client.mget([keys.worker_key(m.decode()) for m in members])
        )
        return tuple(WorkerInfo.model_validate_json(value) for value in values if value)

    @workers.setter
    def workers(self, keep: list[WorkerInfo] | tuple[WorkerInfo, ...]) -> None:
        """Delete the heartbeat keys of the listed workers not in ``keep``.

        Those workers go on consuming (as the fake's scripts do), unlisted: the gateway sees
        what it sees after a Redis restart or a worker's death. Their next heartbeat is
        ``QUEUE_SETTINGS.heartbeat_interval_s`` away, after the end of any test.
        """
        listed = {info.worker_id for info in self.workers}
        kept = {info.worker_id for info in keep}
        if kept - listed:
            raise ValueError(f"workers {sorted(kept - listed)} are not listed; use serve()")
        gone = sorted(listed - kept)
        if gone:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(*(keys.worker_key(worker_id) for worker_id in gone))
            pipe.zrem(keys.WORKER_INDEX, *gone)
            pipe.execute()

    async def _handle(self, job: Job, ctx: JobContext) -> AsyncIterator[Event]:
        """The handler of every scripted worker: the stage's script, as the fake runs it."""
        self.received.append(job)
        stopped = self.cancelled_event(job.job_id)
        relay = asyncio.create_task(_relay(ctx.stop_event, stopped))
        events = self.scripts[job.stage](job, self)
        try:
            async for event in events:
                if isinstance(event, Started):
                    continue  # the worker loop sent its own before running the handler
                yield event
        finally:
            relay.cancel()
            await close_events(events)

    async def shutdown(self) -> None:
        """Stop the workers (their running jobs get the shutdown grace) and the gateway's reply
        reader, together, then the pools; raises if a worker failed or would not stop."""
        for running in self._running:
            running.worker.stop()
        tasks = [running.task for running in self._running]
        errors: list[BaseException] = []
        await asyncio.gather(self._stop_workers(tasks, errors), self._close_transport())
        await self._world.aclose()
        if errors:
            raise RuntimeError(f"scripted workers failed: {errors!r}") from errors[0]

    @staticmethod
    async def _stop_workers(tasks: list[asyncio.Task[None]], errors: list[BaseException]) -> None:
        if not tasks:
            return
        timeout = QUEUE_SETTINGS.shutdown_grace_s + 5.0
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
            errors.append(TimeoutError(f"{task.get_name()} did not stop in {timeout}s"))
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        errors += [exc for task in done if (exc := task.exception()) is not None]


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


# --- a database of this session's own -----------------------------------------------------------
LEASE_KEY = "seedx-test:lease"
"""Held (with a TTL) by the session using the database; outside the ``seedx:`` key space."""
MARK_KEY = "seedx-test:gateway-unit"
"""Left in a database these tests used, so a later session may take it although not empty."""
LEASE_TTL_MS = 15 * 60 * 1000
"""Renewed by every test; a crashed session's database is free again after this."""


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _db_of(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def _busy_databases(client: sync_redis.Redis) -> set[int]:
    """The databases other connections have selected now (best effort: none if not allowed)."""
    try:
        clients = cast(list[dict[str, Any]], client.client_list())
    except sync_redis.ResponseError:
        return set()
    return {int(entry["db"]) for entry in clients if str(entry.get("db", "")).isdigit()}


class LeasedDatabase:
    """One Redis database for this test session alone, flushed before each test.

    The key names are fixed (``seedx:...``, see ``workers.keys``), so sessions sharing a Redis
    (developers running the suite at once, CI jobs) need a database each: this takes the
    highest-numbered one that nobody is connected to and that is empty or was left by an earlier
    session of these tests; never the database of the URL itself (the integration tests flush
    that one) nor database 0. If another tool flushes it anyway (the lease is gone), the next
    :meth:`reset` moves to another database.
    """

    def __init__(self, base_url: str, db: int, client: sync_redis.Redis, token: str) -> None:
        self.base_url = base_url
        self.db = db
        self.url = _with_db(base_url, db)
        self.client = client
        self._token = token

    @classmethod
    def acquire(cls, base_url: str, avoid: frozenset[int] = frozenset()) -> LeasedDatabase:
        token = new_id()
        probe = sync_redis.Redis.from_url(base_url)
        try:
            try:
                count = int(cast(dict[str, Any], probe.config_get("databases"))["databases"])
            except (sync_redis.ResponseError, KeyError, ValueError):
                count = 16
            busy = _busy_databases(probe) | avoid | {0, _db_of(base_url)}
        finally:
            probe.close()
        for db in range(count - 1, 0, -1):
            if db in busy:
                continue
            client = sync_redis.Redis.from_url(_with_db(base_url, db))
            if client.set(LEASE_KEY, token, nx=True, px=LEASE_TTL_MS):
                if client.exists(MARK_KEY) or client.dbsize() == 1:
                    database = cls(base_url, db, client, token)
                    database.reset()
                    return database
                client.delete(LEASE_KEY)  # someone else's data: not ours to flush
            client.close()
        raise RuntimeError(f"no free Redis database on {base_url} for the gateway unit tests")

    def reset(self) -> None:
        """Empty the database (keeping the lease, renewed), atomically."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(LEASE_KEY)  # type: ignore[no-untyped-call]
            held = pipe.get(LEASE_KEY) == self._token.encode()
            if held:
                pipe.multi()
                pipe.flushdb()
                pipe.set(MARK_KEY, b"1")
                pipe.set(LEASE_KEY, self._token, px=LEASE_TTL_MS)
                pipe.execute()
        if not held:
            self._move()

    def _move(self) -> None:
        """Take another database: something else flushed or took this one."""
        logger.warning("lost the lease on %s (flushed by another tool?); moving", self.url)
        other = LeasedDatabase.acquire(self.base_url, avoid=frozenset({self.db}))
        self.client.close()
        self.db, self.url, self.client, self._token = (
            other.db,
            other.url,
            other.client,
            other._token,
        )

    def release(self) -> None:
        """Empty the database and give it back (the mark stays)."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(LEASE_KEY)  # type: ignore[no-untyped-call]
                if pipe.get(LEASE_KEY) == self._token.encode():
                    pipe.multi()
                    pipe.flushdb()
                    pipe.set(MARK_KEY, b"1")
                    pipe.execute()
        finally:
            self.client.close()
