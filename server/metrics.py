"""Prometheus metrics of the gateway (``seedx_gateway_*``) and the middleware that records them.

Labels are bounded: ``route`` is the matched route *template* (``/v1/images/{image_id}/content``,
or ``other`` for unmatched paths), ``status`` the HTTP status, ``stage`` llm|diffusion, ``reason``
a fixed set. Collectors are module globals registered once in the default registry, so several
apps in one test process share them.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.logcontext import bind_trace
from workers.protocol import new_id

logger = logging.getLogger(__name__)

RejectReason = Literal[
    "overloaded",
    "unavailable",
    "store_full",
    "model_not_found",
    "too_large",
    "body_timeout",
    "auth",
]

REQUESTS = Counter(
    "seedx_gateway_requests_total",
    "HTTP requests answered, by route and status.",
    ["route", "status"],
)
LATENCY = Histogram(
    "seedx_gateway_request_seconds",
    "Time from request to the last byte of the response (streams included).",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
TTFT = Histogram(
    "seedx_gateway_time_to_first_token_seconds",
    "Time from a chat request to its first generated text (or image) reaching the client.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_WAIT = Histogram(
    "seedx_gateway_queue_wait_seconds",
    "Time a job waited in its queue before a worker started it, as the worker reported.",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("seedx_gateway_in_flight_requests", "HTTP requests being answered now.")
REJECTIONS = Counter(
    "seedx_gateway_rejections_total",
    "Requests refused before any work was queued, by reason.",
    ["route", "reason"],
)
REDIS_FULL = Gauge(
    "seedx_gateway_redis_full",
    "1 while Redis refuses this gateway's writes for want of memory (maxmemory, noeviction): "
    "a refusal within the last few seconds, as /readyz reports it.",
)
IMAGES_DECODED = Counter(
    "seedx_gateway_images_decoded_total",
    "Input images fully decoded by the gateway (admission happens before this).",
)
JOBS_CANCELLED = Counter(
    "seedx_gateway_jobs_cancelled_total",
    "Jobs the gateway cancelled because the client left or the request failed.",
    ["stage"],
)

IDEMPOTENT_REQUESTS = Counter(
    "seedx_gateway_idempotent_requests_total",
    "Requests carrying an Idempotency-Key, by route and outcome: started (the key's first "
    "request: it ran), joined (its first request was still running: answered from it), replayed "
    "(finished: its answer sent again), conflict (the key names another request: 422).",
    ["route", "outcome"],
)

IdempotentOutcome = Literal["started", "joined", "replayed", "conflict"]


_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def reject(scope: Scope, reason: RejectReason) -> None:
    """Count a request refused before any work was queued."""
    REJECTIONS.labels(route_of(scope), reason).inc()


def route_of(scope: Scope) -> str:
    """The route template of a request, or ``other`` (bounded label values)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


REQUEST_ID_KEY = "seedx_request_id"


def request_id_of(scope: Scope) -> str:
    """The id :class:`MetricsMiddleware` gave this request (a fresh one outside it)."""
    request_id = scope.get("state", {}).get(REQUEST_ID_KEY)
    return request_id if isinstance(request_id, str) else new_id()


class MetricsMiddleware:
    """Counts requests, measures latency until the response body is complete, and gives each
    request its id: the ``trace_id`` of its log lines (and of its jobs' lines in the workers)
    and the ``X-Request-ID`` header of every answer, errors included, for users to quote.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = new_id()
        scope.setdefault("state", {})[REQUEST_ID_KEY] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        IN_FLIGHT.inc()
        with bind_trace(request_id):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                IN_FLIGHT.dec()
                route = route_of(scope)
                elapsed = time.perf_counter() - started
                REQUESTS.labels(route, str(status)).inc()
                LATENCY.labels(route).observe(elapsed)
                if route not in _QUIET_ROUTES:
                    # The metric label stays bounded ("other"); the log line names the path a
                    # client actually asked for, which is what an operator reading a 404 needs.
                    where = route if route != "other" else scope.get("path", route)[:256]
                    logger.info(
                        "%s %s -> %d in %.1f ms", scope["method"], where, status, elapsed * 1000
                    )
