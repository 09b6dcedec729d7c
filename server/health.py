"""``/healthz`` (the process answers), ``/readyz`` (it can serve), ``/metrics`` (Prometheus).

Readiness means a request could succeed now: Redis answers, the reply reader is connected, and
every stage has a model with a live worker (heartbeat within its lease, or interrupted by a
Redis outage that ended less than a lease ago: see ``ModelDirectory``). A gateway that is up
but cannot serve must say so (issue 9: no "200 while nothing is served"), so load balancers
route around it.

Readiness is also per model: the body lists every known model (``models``: stage, ready, live
workers, the endpoints it serves), ``/readyz?model=NAME`` answers 200 or 503 for one model (404
for a model the gateway does not know), and ``models.readiness`` (``SEEDX_GATEWAY_MODELS__
READINESS``) names models whose absence makes ``/readyz`` itself 503. It is empty by default on
purpose: every gateway replica reads the same heartbeats, so a readiness that failed whenever
one model had no worker would take *all* of them out of their Kubernetes Service at once, and
requests for the models that are up would fail too; with it empty they are served and requests
for the missing model get 503 with ``Retry-After`` until a worker is back. ``seedx serve``,
one gateway in front of a known set of workers, lists the models it starts.

Redis full: while Redis refuses this gateway's writes for want of memory (``maxmemory`` with
``noeviction``: a refusal within the last ``redis_full_window_s``), the ``redis_memory``
check is false, ``redis`` in the body says ``"Redis full"`` and ``seedx_gateway_redis_full`` is 1:
no request could be admitted (each gets 503 with ``Retry-After``), so the replica leaves its
Service until the next probe finds room (docs/deploy.md: sizing ``maxmemory``).

The health routes never need an API key; ``/metrics`` does unless ``public_metrics``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server import fleet
from server.catalog import ModelState, readiness_checks
from server.deps import GatewayDep
from server.errors import ModelNotFound, error_response
from server.metrics import REDIS_FULL
from workers.connection import seconds_since_full
from workers.errors import TransportError

router = APIRouter(tags=["health"])


def redis_full(window_s: float) -> bool:
    """Whether Redis refused one of this process's writes within the last ``window_s`` seconds
    (``GatewaySettings.redis_full_window_s``), and the gauge ``seedx_gateway_redis_full`` set to
    match. A refusal is an event and readiness a state: the window holds the state long
    enough for the readiness probe and the scrape, which come between requests, to see it."""
    since = seconds_since_full()
    full = since is not None and since < window_s
    REDIS_FULL.set(1 if full else 0)
    return full


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"description": "Not ready; checks and models say why"},
        404: {"description": "model names no model this gateway knows"},
    },
)
async def readyz(
    gateway: GatewayDep,
    model: Annotated[
        str | None, Query(max_length=128, description="Answer for this model alone.")
    ] = None,
) -> Response:
    """200 when Redis, the reply reader and a worker per stage (and per ``models.readiness``
    model) are available; with ``model``, when that model has a live worker."""
    directory = gateway.directory
    checks: dict[str, bool] = {
        "redis": await gateway.backend.ping(),
        "reply_reader": gateway.backend.connected,
        "redis_memory": not redis_full(gateway.settings.redis_full_window_s),
    }
    states: list[ModelState]
    try:
        states = await directory.states()
    except TransportError:
        states = directory.states_of([])
    if model is not None:
        states = [state for state in states if state.model == model]
        if not states:
            return error_response(
                ModelNotFound(f"the model {model!r} does not exist", param="model")
            )
        checks["model"] = all(state.ready for state in states)
    else:
        checks.update(readiness_checks(states, directory.routing, directory.scale_to_zero_stages))
    ready = all(checks.values())
    body: dict[str, Any] = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "models": {state.model: state.as_json() for state in states},
    }
    if not checks["redis_memory"]:
        body["redis"] = "Redis full: it refuses writes at its maxmemory (noeviction)"
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text format of every collector in this process, fleet gauges refreshed."""
    await fleet.refresh(gateway.backend)
    redis_full(gateway.settings.redis_full_window_s)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
