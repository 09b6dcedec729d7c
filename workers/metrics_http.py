"""The HTTP side of a worker process: Prometheus ``/metrics`` and a liveness ``/healthz``.

Workers are not web servers; a tiny WSGI server on a daemon thread answers scrapes and probes
without touching the event loop, so a probe still answers while a job runs. ``/healthz`` says
whether the process can still serve (the LLM engine is alive; the diffusion worker's event loop
is responsive), which is what a Kubernetes liveness probe should restart on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from workers.startup import StartupError

logger = logging.getLogger(__name__)

Liveness = Callable[[], bool]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
        """Scrapes every few seconds would flood the log; stay quiet."""


def metrics_app(alive: Liveness) -> Callable[..., Iterable[bytes]]:
    """WSGI app: ``/healthz`` answers 200 while ``alive()`` (else 503), anything else metrics."""
    metrics = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok = alive()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if ok else b"not live (starting, or its engine died)\n"]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return app


def start_metrics_server(port: int, host: str, alive: Liveness) -> WSGIServer:
    """Serves :func:`metrics_app` on ``host:port`` from a daemon thread; returns the server
    (``shutdown()`` it to stop). Port 0 in tests picks a free port (``server.server_port``)."""
    try:
        server = make_server(host, port, metrics_app(alive), ThreadingWSGIServer, _QuietHandler)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise StartupError(
            f"/metrics: port {port} on {host} is already in use (another process holds it: "
            "set the worker's metrics_port)"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    logger.info("metrics on http://%s:%d/metrics (liveness /healthz)", host, server.server_port)
    return server


class LateLiveness:
    """The liveness of a process that binds its metrics port before it loads its model.

    A worker binds ``/metrics`` first thing, so the port is its own before vLLM or a sibling
    worker's vLLM picks free ports of its own (a port chosen by a launcher and bound only after a
    minutes-long load could be taken meanwhile). Until :meth:`set` hands over the real check,
    ``/healthz`` answers 503, which a Kubernetes startup probe reads as "still starting".
    """

    def __init__(self) -> None:
        self._check: Liveness | None = None

    def set(self, check: Liveness) -> None:
        self._check = check

    def __call__(self) -> bool:
        return self._check is not None and self._check()


@contextlib.contextmanager
def metrics_bound_first(port: int | None, host: str) -> Iterator[LateLiveness]:
    """Serves ``/metrics`` on ``port`` (None: off) for the life of a worker, from before its
    model loads; yields the :class:`LateLiveness` to hand the real check to once loaded."""
    liveness = LateLiveness()
    server = None if port is None else start_metrics_server(port, host, liveness)
    try:
        yield liveness
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


class LoopBeat:
    """Liveness of an asyncio loop: a task stamps the time every ``interval_s``; the loop is
    alive while the last stamp is younger than ``stale_s`` (a blocked loop stops stamping)."""

    def __init__(self, interval_s: float = 1.0, stale_s: float = 15.0) -> None:
        self.interval_s = interval_s
        self.stale_s = stale_s
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return time.monotonic() - self._last < self.stale_s

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-beat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._last = time.monotonic()
            await asyncio.sleep(self.interval_s)
