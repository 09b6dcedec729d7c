"""Gateway unit fixtures: the app on a :class:`FakeBackend`, an httpx client, the openai client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import GatewaySettings
from tests.unit.server.fakes import FakeBackend

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_settings(**overrides: Any) -> GatewaySettings:
    """Settings for tests: one key, no caching of worker lists or queue depths."""
    values: dict[str, Any] = {
        "api_keys": [API_KEY],
        "admission": {
            "stats_ttl_s": 0,
            "stats_max_age_s": 0,
            "directory_ttl_s": 0,
            "directory_max_age_s": 0,
        },
        "bounds": {"default_size": "64x64", "default_steps": 2},
        **overrides,
    }
    return GatewaySettings(**values)


@pytest.fixture
def backend() -> FakeBackend:
    fake = FakeBackend()
    fake.serve("llm", "seed-x-i")
    fake.serve("llm", "seed-x-edit")
    fake.serve("diffusion", "first_stage")
    fake.serve("diffusion", "second_stage")
    return fake


@pytest.fixture
def settings() -> GatewaySettings:
    return make_settings()


@pytest.fixture
async def app(settings: GatewaySettings, backend: FakeBackend) -> AsyncIterator[FastAPI]:
    application = create_app(settings, backend)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway.test", headers=AUTH
    ) as http:
        yield http


@pytest.fixture
async def oai(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client, in-process (its own httpx2 over ASGI)."""
    transport = httpx2.ASGITransport(app=app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://gateway.test/v1")
    async with openai.AsyncOpenAI(
        api_key=API_KEY, base_url="http://gateway.test/v1", http_client=http, max_retries=0
    ) as client:
        yield client
