"""API keys on every route but health, the body limit while streaming, CORS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from tests.unit.server.conftest import API_KEY, make_settings
from tests.unit.server.fakes import FakeBackend

ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("POST", "/v1/images/variations"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/seed-x-i"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/nowhere"),
]


def anonymous(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key-0123456789", f"Bearer {API_KEY}x", "Bearer ", f"Basic {API_KEY}", "x"],
)
async def test_every_route_refuses_without_a_valid_key(
    app: FastAPI, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with anonymous(app) as client:
        response = await client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"
    assert API_KEY not in response.text


@pytest.mark.parametrize("image_id", ["abc", "0" * 32 + ".png.9999999999." + "0" * 32])
async def test_image_content_without_a_key_serves_signed_ids_only(
    app: FastAPI, image_id: str
) -> None:
    """A signed content URL is its own capability (issue 21, item 8): without a key, an id
    this gateway did not sign is a 404, and nothing but the content route opens."""
    async with anonymous(app) as client:
        response = await client.get(f"/v1/images/{image_id}/content")
        assert response.status_code == 404
        for path in (f"/v1/images/{image_id}/contents", f"/v1/x/images/{image_id}/content"):
            assert (await client.get(path)).status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_routes_are_open(app: FastAPI, path: str) -> None:
    async with anonymous(app) as client:
        assert (await client.get(path)).status_code == 200


async def test_keys_from_a_file_and_public_metrics(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# operators\nfile-key-0123456789\n\n")
    settings = make_settings(api_keys=[], api_keys_file=keys, public_metrics=True)
    app = create_app(settings, FakeBackend())
    async with app.router.lifespan_context(app), anonymous(app) as client:
        assert (await client.get("/metrics")).status_code == 200
        headers = {"Authorization": "Bearer file-key-0123456789"}
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401


async def test_declared_oversized_body_is_413_before_reading(client: httpx.AsyncClient) -> None:
    read = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        read = True
        yield b"{}"

    response = await client.post(
        "/v1/chat/completions",
        content=body(),
        headers={"Content-Length": str(65 * 2**20), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not read


async def test_streamed_body_is_cut_at_the_limit(backend: FakeBackend) -> None:
    app = create_app(make_settings(max_body_bytes=4096), backend)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1024
            yield b" " * 1024

    async with app.router.lifespan_context(app), anonymous(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=body(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert sent <= 8 * 1024


async def test_multipart_over_the_limit_is_413(backend: FakeBackend) -> None:
    app = create_app(make_settings(max_body_bytes=4096), backend)
    async with app.router.lifespan_context(app), anonymous(app) as client:
        response = await client.post(
            "/v1/images/variations",
            files={"image": ("a.png", b"\0" * 10_000)},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert response.status_code == 413


async def test_invalid_content_length_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b"{}", headers={"Content-Length": "abc"}
    )
    assert response.status_code == 400


async def test_cors_preflight_when_configured(backend: FakeBackend) -> None:
    app = create_app(make_settings(cors_origins=["https://app.example"]), backend)
    async with app.router.lifespan_context(app), anonymous(app) as client:
        response = await client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"


async def test_a_stalled_body_is_408(backend: FakeBackend) -> None:
    app = create_app(make_settings(body_timeout_s=0.2), backend)

    async def body() -> AsyncIterator[bytes]:
        yield b'{"messages": ['
        await asyncio.sleep(30)  # the client stops sending (fewer bytes than declared)
        yield b"]}"

    async with app.router.lifespan_context(app), anonymous(app) as client:
        started = time.monotonic()
        response = await client.post(
            "/v1/chat/completions",
            content=body(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
    assert response.status_code == 408
    assert response.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 5


async def test_a_slow_body_that_keeps_coming_is_read(backend: FakeBackend) -> None:
    app = create_app(make_settings(body_timeout_s=0.5), backend)
    backend.serve("llm", "seed-x-i")
    payload = b'{"messages": [{"role": "user", "content": "hi"}]}'

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 8):  # ~1 s in all, never 0.5 s without a byte
            await asyncio.sleep(0.1)
            yield payload[i : i + 8]

    async with app.router.lifespan_context(app), anonymous(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=body(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
    assert response.status_code == 200, response.text
