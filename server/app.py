"""``create_app(settings)``: the gateway's FastAPI application.

The lifespan starts the backend (the Redis transport's single reply-reader task for this
process) and, on shutdown, waits for pending request cleanups (job cancellations, blob
releases) before closing it. Middleware, outermost first: metrics (sees every answer, 401 and
413 included), CORS (when origins are configured), API keys (before any body is read), the body
limit (while the body is read), ``Idempotency-Key`` (on a Redis backend: it keeps answers in
Redis; :mod:`server.idempotency`).

Tests pass their own ``backend`` (a fake implementing :class:`server.backend.Backend`); the
process passes none and gets :class:`~server.backend.RedisBackend` on ``settings.redis``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.auth import HEALTH_PATHS, APIKeyMiddleware, KeyChecker
from server.backend import Backend, RedisBackend
from server.chat.router import router as chat_router
from server.errors import install_error_handlers
from server.health import router as health_router
from server.idempotency import IdempotencyMiddleware, IdempotentRuns, RequestRecords
from server.idempotency.key import IDEMPOTENT_PATHS
from server.images.router import router as images_router
from server.limits import BodyLimitMiddleware
from server.metrics import MetricsMiddleware
from server.models.router import router as models_router
from server.openapi import document_idempotency
from server.playground import mount_playground, playground_paths
from server.published import is_content_path
from server.responses.router import router as responses_router
from server.responses.store import ResponseStore, store_for
from server.settings import GatewaySettings
from server.state import Gateway

API_VERSION = "1"

logger = logging.getLogger(__name__)


def create_app(
    settings: GatewaySettings,
    backend: Backend | None = None,
    responses: ResponseStore | None = None,
) -> FastAPI:
    """The gateway app; ``backend`` defaults to the Redis transport of ``settings``, and
    ``responses`` (stored Responses API objects) to Redis beside it (memory on a fake)."""
    backend = backend or RedisBackend.connect(settings.redis, settings.queue)
    gateway = Gateway.build(settings, backend)
    responses = responses or store_for(backend, settings.response_store_ttl_s)
    runs = idempotent_runs(settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            if runs is not None:
                await runs.close()
            await gateway.dispatcher.drain()
            await gateway.admission.close()
            await gateway.directory.close()
            await backend.close()

    docs = settings.docs_enabled
    app = FastAPI(
        title="SEED-X gateway",
        summary="OpenAI-compatible API for SEED-X: chat with images in and out, image "
        "generation, editing and variations.",
        version=API_VERSION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.gateway = gateway
    app.state.responses = responses
    install_error_handlers(app, settings.admission.retry_after_s)
    for router in (chat_router, responses_router, images_router, models_router, health_router):
        app.include_router(router)

    open_paths = HEALTH_PATHS | ({"/metrics"} if settings.public_metrics else set())
    if settings.playground_enabled:
        mount_playground(app)
        open_paths |= playground_paths()
    if runs is not None:
        app.add_middleware(
            IdempotencyMiddleware, runs=runs, retry_after_s=settings.admission.retry_after_s
        )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(
        APIKeyMiddleware,
        checker=KeyChecker(settings.load_api_keys()),
        open_paths=open_paths,
        is_open=is_content_path,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(MetricsMiddleware)
    _document_security(app)
    return app


def idempotent_runs(settings: GatewaySettings, backend: Backend) -> IdempotentRuns | None:
    """The ``Idempotency-Key`` runs, kept in Redis beside the job transport; None on another
    backend (unit tests' fakes), where the header is not acted on."""
    if not isinstance(backend, RedisBackend):
        logger.info("Idempotency-Key is not supported: the backend is not Redis")
        return None
    records = RequestRecords(
        backend.transport.redis,
        ttl_s=settings.idempotency_ttl_s,
        lease_s=settings.queue.lease_s,
        block_s=settings.queue.block_s,
    )
    return IdempotentRuns(records)


def _document_security(app: FastAPI) -> None:
    """Declare the Bearer scheme in the OpenAPI document (schema tools then send the key)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer"}
            }
            for path, operations in schema.get("paths", {}).items():
                if path in HEALTH_PATHS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearerAuth": []}]
                if path in IDEMPOTENT_PATHS:
                    document_idempotency(operations["post"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
