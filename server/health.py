"""``/healthz`` (the process answers), ``/readyz`` (it can serve), ``/metrics`` (Prometheus).

Readiness means a request could succeed now: Redis answers, the reply reader is connected, and
every stage has at least one live worker (heartbeat within its lease, or interrupted by a Redis
outage that ended less than a lease ago: see ``ModelDirectory``). A gateway that is up but
cannot serve must say so (issue 9: no "200 while nothing is served"), so load balancers route
around it. The health routes never need an API key; ``/metrics`` does unless
``public_metrics``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server import fleet
from server.deps import GatewayDep
from workers import keys
from workers.errors import TransportError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready; checks says why"}})
async def readyz(gateway: GatewayDep) -> Response:
    """200 when Redis, the reply reader and a worker per stage are all available."""
    checks: dict[str, Any] = {"redis": await gateway.backend.ping()}
    checks["reply_reader"] = gateway.backend.connected
    try:
        stages = await gateway.directory.serving_stages()
    except TransportError:
        stages = set()
    for stage in keys.STAGES:
        checks[f"workers_{stage}"] = (
            stage in stages or stage in gateway.directory.scale_to_zero_stages
        )
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text format of every collector in this process, fleet gauges refreshed."""
    await fleet.refresh(gateway.backend)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
