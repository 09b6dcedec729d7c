"""``seedx gateway``: the gateway process (uvicorn around :func:`server.app.create_app`).

Flags override ``SEEDX_GATEWAY_*``. Logging is configured here, once: one JSON object per line,
with the ``job_id``/``trace_id`` of the request when bound (STYLE.md §5).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
from typing import Any

from workers.logcontext import JobContextFilter

logger = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, job/trace ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in ("job_id", "trace_id"):
            value = getattr(record, name, "-")
            if value != "-":
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for every logger of the process (uvicorn's included)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def main(
    host: str | None = None,
    port: int | None = None,
    redis_url: str | None = None,
    log_level: str = "info",
) -> int:
    """Entry of ``seedx gateway``."""
    import uvicorn

    from server.app import create_app
    from server.settings import GatewaySettings
    from workers.startup import check_redis, listening_socket

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if redis_url is not None:
        overrides["redis"] = {"url": redis_url}  # merged with SEEDX_GATEWAY_REDIS__* values
    settings = GatewaySettings(**overrides)
    configure_logging(log_level)
    logger.info("gateway starting on %s:%d", settings.host, settings.port)  # no URL: secrets
    # The socket is bound first, by us: a taken port is one clear StartupError line within a
    # second (exit code 78, which `seedx serve` does not restart), not uvicorn's log, exit 1
    # and a restart loop.
    sock = listening_socket(
        settings.host, settings.port, "another process holds it: set --port or SEEDX_GATEWAY_PORT"
    )
    # A rejected password, an unverified certificate or a Redis Cluster: one line and exit 78,
    # not a gateway that reports "unavailable" forever.
    asyncio.run(check_redis(settings.redis))
    app = create_app(settings)
    # Everything built so far (modules, schemas, routes) lives as long as the process: moved out
    # of the collector's generations, full collections stop re-scanning it, which shortens the
    # pauses that land on requests (time-to-429 and TTFT tails; issue 9).
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
