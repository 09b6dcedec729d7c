"""Gateway unit fixtures: the app on a backend, an httpx client, the openai client.

``backend`` is parametrized (issue 21: "a fake cannot hide a contract"): every test that uses
it, directly or through ``app``/``client``/``oai``, runs twice:

- ``fake``: :class:`~tests.unit.server.fakes.FakeBackend`, in memory, scripted workers;
- ``redis``: :class:`~tests.unit.server.redis_backend.RedisScriptedBackend`, the real
  ``RedisBackend`` on a real Redis (``SEEDX_TEST_REDIS_URL``, else an embedded Valkey; a
  database of this session's own, flushed per test) with the same scripts run by real worker
  loops.

A test that needs what only the fake can do (scripted overload, outage, queue loads, reader
errors) is listed in :data:`FAKE_ONLY` (or marked ``@pytest.mark.fake_only("why")``) and is
skipped on ``redis`` with its reason. A test that fails on ``redis`` because of a bug in the
gateway or the transport is listed in :data:`REDIS_XFAIL`: a strict xfail, so it must be
removed once the bug is fixed; one that fails there only sometimes (a race) is in
:data:`REDIS_FLAKY`, a non-strict xfail.

``SEEDX_TEST_BACKENDS=fake`` (or ``redis``) runs one variant only.

Runtime: the ``redis`` variant costs about 0.3 s more per test (workers started and stopped,
Redis round trips). Run over every file it more than doubled ``pytest tests/unit/server``, so
the files in :data:`FAKE_FILES` (no request there reaches the transport, or the test body is
the expensive part) run on the fake alone; every other file runs on both: the request paths
(``test_chat*``, ``test_images``, ``test_responses*``, ``test_lifecycle``, ``test_request_ids``,
``test_refused_before_the_stream``, ``test_unicode``), the worker directory and readiness from
real heartbeats (``test_catalog``, ``test_readiness``, ``test_errors_health``) and
``test_backend_contract``. A new file runs on both unless listed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import GatewaySettings
from tests.redis_server import redis_url_for_tests
from tests.unit.server.fakes import FakeBackend
from tests.unit.server.redis_backend import LeasedDatabase, RedisScriptedBackend

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


SERVED: tuple[tuple[Any, str], ...] = (
    ("llm", "seed-x-i"),
    ("llm", "seed-x-edit"),
    ("diffusion", "first_stage"),
    ("diffusion", "second_stage"),
)
"""The workers every ``backend`` starts with (the demo's models)."""

_LOADS = "sets backend.loads (queue depths) that Redis can only show with real queued jobs"
_WORKERS_OUTAGE = "sets backend.last_outage (a Redis outage the reply reader lived through)"
_REDIS_DOWN = "sets backend.redis_up/connected (Redis or the reply reader down)"
_SUBMIT_ERROR = "sets backend.submit_error (a scripted refusal of the enqueue)"
_READER_DEADLINE = (
    "its script raises DeadlineExceeded to play the reply reader's deadline; raised in a real "
    "worker it is the job's Failed event, after which there is nothing to cancel"
)

FAKE_FILES: dict[str, str] = {
    "test_auth_limits.py": "keys, body limits and CORS answer before any job is queued",
    "test_special_tokens.py": "tokenizer checks (seconds each); a job's text through Redis is "
    "covered by test_chat",
}
"""Files whose tests use ``backend`` but run on the fake alone (see Runtime above)."""

FAKE_ONLY: dict[str, str] = {
    "test_chat.py::test_full_queue_is_429_before_any_image_is_decoded": _LOADS,
    "test_chat.py::test_queue_bound_counts_local_admissions": _LOADS,
    "test_chat.py::test_transport_errors_map_to_statuses": _SUBMIT_ERROR,
    "test_chat.py::test_reply_reader_down_is_503_at_once": _REDIS_DOWN,
    "test_images.py::test_full_diffusion_queue_is_429": _LOADS,
    "test_errors_health.py::test_healthz_and_readyz": _REDIS_DOWN,
    "test_lifecycle.py::test_deadline_is_504_and_the_job_is_cancelled": _READER_DEADLINE,
    "test_readiness.py::test_readyz_for_one_model_is_503_while_redis_is_down": _REDIS_DOWN,
    "test_errors_health.py::test_ready_and_serving_while_heartbeats_return_after_a_redis_outage": (
        _WORKERS_OUTAGE
    ),
}
"""``file::test`` -> why it runs on the fake only (skipped on ``redis``)."""

_SWALLOWED_CANCEL = (
    "issue 21: workers.replies.Subscription._next_item awaits asyncio.wait_for, which on "
    "Python 3.11 swallows a cancellation landing in the loop turn an event arrives: the task "
    "takes the event and goes on waiting"
)

REDIS_XFAIL: dict[str, str] = {}
"""``file::test`` -> the bug that makes it fail on ``redis`` (strict xfail there)."""

_DISCONNECT_RACE = (
    f"{_SWALLOWED_CANCEL}; a client leaving as a token or Started arrives leaves the request "
    "waiting for the job's next event, so the app outlives the test's 2 s (and its fixed "
    "0.2 s sleep assumes the fake's zero latency)"
)

REDIS_FLAKY: dict[str, str] = {}
"""``file::test`` -> why it fails on ``redis`` now and then (a non-strict xfail there: a race
cannot fail every time); the deterministic case is in :data:`REDIS_XFAIL`."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fake_only(reason): run this gateway unit test on FakeBackend only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``backend`` on both backends (see the module docstring)."""
    if "backend" not in metafunc.fixturenames:
        return
    file = Path(str(metafunc.definition.path)).name
    name = f"{file}::{metafunc.definition.originalname}"
    marker = metafunc.definition.get_closest_marker("fake_only")
    redis_marks: list[pytest.MarkDecorator] = []
    if marker is not None or name in FAKE_ONLY:
        reason = marker.args[0] if marker is not None and marker.args else FAKE_ONLY.get(name)
        redis_marks.append(pytest.mark.skip(reason=f"fake only: {reason}"))
    elif name in REDIS_XFAIL:
        redis_marks.append(pytest.mark.xfail(strict=True, reason=REDIS_XFAIL[name]))
    elif name in REDIS_FLAKY:
        redis_marks.append(pytest.mark.xfail(strict=False, reason=REDIS_FLAKY[name]))
    params = [pytest.param("fake"), pytest.param("redis", marks=redis_marks)]
    chosen = os.environ.get("SEEDX_TEST_BACKENDS", "fake,redis").split(",")
    if file in FAKE_FILES:
        chosen = [kind for kind in chosen if kind == "fake"]
    metafunc.parametrize("backend", [p for p in params if p.values[0] in chosen], indirect=True)


@pytest.fixture(scope="session")
def redis_database() -> Iterator[LeasedDatabase]:
    """A Redis database of this session's own (started only if a ``redis`` test runs)."""
    with redis_url_for_tests() as url:
        database = LeasedDatabase.acquire(url)
        try:
            yield database
        finally:
            database.release()


@pytest.fixture
async def backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[FakeBackend | RedisScriptedBackend]:
    if request.param == "fake":
        fake = FakeBackend()
        for stage, model in SERVED:
            fake.serve(stage, model)
        yield fake
        return
    database: LeasedDatabase = request.getfixturevalue("redis_database")
    database.reset()
    real = RedisScriptedBackend(database.url, database.client)
    try:
        await real.start()  # as the app's lifespan does (some tests drive an app without it)
        for stage, model in SERVED:
            real.serve(stage, model)
        await real.settle()
        yield real
    finally:
        await real.shutdown()


@pytest.fixture
def settings() -> GatewaySettings:
    return make_settings()


@pytest.fixture
async def app(
    settings: GatewaySettings, backend: FakeBackend | RedisScriptedBackend
) -> AsyncIterator[FastAPI]:
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
