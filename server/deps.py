"""``Annotated`` dependency aliases of the routes (full-stack-fastapi-template's ``deps.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.state import Gateway


async def get_gateway(request: Request) -> Gateway:
    """The app's :class:`~server.state.Gateway` (set by ``create_app``).

    ``async`` on purpose: FastAPI runs a sync dependency in its thread pool, a thread hop per
    request that cost more than the rest of the request path.
    """
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
