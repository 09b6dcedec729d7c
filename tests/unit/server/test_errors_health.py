"""Error bodies everywhere, models from heartbeats, health, readiness, metrics."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from tests.unit.server.conftest import AUTH, make_settings
from tests.unit.server.fakes import FakeBackend, png_bytes


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


async def test_validation_error_is_400_with_param(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}
    error = assert_openai_error(await client.post("/v1/chat/completions", json=body), 400)
    assert str(error["param"]).startswith("messages[0].content")


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert_openai_error(response, 400)


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert assert_openai_error(await client.get("/v1/nowhere"), 404)["code"] == "not_found"
    error = assert_openai_error(await client.get("/v1/chat/completions"), 405)
    assert error["code"] == "method_not_allowed"


async def test_unexpected_exception_is_a_generic_500(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    async def boom(*args: object) -> object:
        raise RuntimeError("secret internals")

    backend.submit = boom  # type: ignore[method-assign]
    response = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    error = assert_openai_error(response, 500)
    assert error["message"] == "internal error"
    assert "secret" not in response.text


async def test_models_lists_live_workers(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {(m["id"], m["stage"]) for m in models["data"]} == {
        ("seed-x-i", "llm"),
        ("seed-x-edit", "llm"),
        ("first_stage", "diffusion"),
        ("second_stage", "diffusion"),
    }
    assert (await client.get("/v1/models/seed-x-i")).json()["id"] == "seed-x-i"
    missing = assert_openai_error(await client.get("/v1/models/gpt-4"), 404)
    assert missing["code"] == "model_not_found"


async def test_healthz_and_readyz(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert all(ready.json()["checks"].values())
    backend.workers = [w for w in backend.workers if w.stage == "llm"]
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["workers_diffusion"] is False
    backend.redis_up = False
    assert (await client.get("/readyz")).json()["checks"]["redis"] is False


async def test_ready_and_serving_while_heartbeats_return_after_a_redis_outage(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """A Redis restart drops every heartbeat (their TTL ran while it was down); until the
    workers write their next ones the gateway stays ready and routes to them (one lease, 30 s
    by default), instead of leaving its Service and answering 503."""
    assert (await client.get("/readyz")).status_code == 200  # both stages seen served
    backend.workers = []
    now = time.monotonic()
    backend.last_outage = (now - 40.0, now - 1.0)
    assert (await client.get("/readyz")).status_code == 200
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
    backend.last_outage = (now - 80.0, now - 31.0)  # a lease has passed: absence is death
    assert (await client.get("/readyz")).status_code == 503
    assert_openai_error(await client.post("/v1/chat/completions", json=chat), 503)


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/v1/images/abcdef/content")
    await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    await client.post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    text = (await client.get("/metrics")).text
    assert (
        'seedx_gateway_rejections_total{reason="model_not_found",route="/v1/chat/completions"}'
        in text
        or 'seedx_gateway_rejections_total{route="/v1/chat/completions",reason="model_not_found"}'
        in text
    )
    assert (
        'seedx_gateway_requests_total{route="/v1/images/{image_id}/content",status="404"}' in text
    )
    assert 'route="/v1/chat/completions",status="200"' in text
    assert "seedx_gateway_time_to_first_token_seconds_bucket" in text
    assert "seedx_gateway_queue_wait_seconds_bucket" in text
    assert "abcdef" not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_keys": []}, "no API keys"),
        ({"api_keys": ["short"]}, "at least 8"),
        ({"url_signing_key": "too-short"}, "32 bytes"),
        ({"bounds": {"min_size": 1024, "max_size": 512}}, "min_size"),
    ],
)
def test_bad_settings_fail_at_startup(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_settings(**overrides)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.settings import GatewaySettings

    monkeypatch.setenv("SEEDX_GATEWAY_API_KEYS", '["env-key-0123456789"]')
    monkeypatch.setenv("SEEDX_GATEWAY_REDIS__URL", "redis://cache:6379/3")
    monkeypatch.setenv("SEEDX_GATEWAY_MEDIA__MAX_IMAGES", "3")
    monkeypatch.setenv("SEEDX_GATEWAY_FETCH__ALLOW_NETWORKS", '["10.0.0.0/8"]')
    settings = GatewaySettings()
    assert settings.load_api_keys() == ("env-key-0123456789",)
    assert settings.redis.url == "redis://cache:6379/3"
    assert settings.media.max_images == 3
    assert str(settings.fetch.allow_networks[0]) == "10.0.0.0/8"


def test_every_setting_is_described() -> None:
    from server import settings as module

    for cls in (
        module.GatewaySettings,
        module.ModelRouting,
        module.MediaLimits,
        module.FetchSettings,
        module.Admission,
        module.Bounds,
    ):
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"


async def test_open_app_without_keys_when_allowed() -> None:
    app: FastAPI = create_app(make_settings(api_keys=[], allow_unauthenticated=True), FakeBackend())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        assert (await client.get("/v1/models")).status_code == 200
    assert AUTH  # the default test app does require keys (see test_auth_limits)


SCALE_TO_ZERO = {
    "stats_ttl_s": 0,
    "stats_max_age_s": 0,
    "directory_ttl_s": 0,
    "directory_max_age_s": 0,
    "scale_to_zero": ["diffusion"],
}


@pytest.mark.parametrize("settings", [make_settings(admission=SCALE_TO_ZERO)])
async def test_scale_to_zero_stage_queues_jobs_and_stays_ready(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """With the diffusion stage scaled to zero, image jobs queue for the autoscaler (no 503)
    and readiness does not wait for a diffusion worker; unknown de-tokenizers stay 404."""
    backend.workers = [w for w in backend.workers if w.stage == "llm"]
    assert (await client.get("/readyz")).status_code == 200
    files = {"image": ("a.png", png_bytes(8, 8), "image/png")}
    answer = await client.post("/v1/images/variations", files=files, data={"size": "64x64"})
    assert answer.status_code == 200, answer.text  # the fake backend ran the queued job
    assert backend.jobs_of("image.reconstruct")
    unknown = await client.post(
        "/v1/images/variations", files=files, data={"size": "64x64", "model": "third_stage"}
    )
    assert_openai_error(unknown, 404)


@pytest.mark.parametrize("settings", [make_settings(redis_full_window_s=3.0)])
async def test_redis_full_lasts_the_configured_window(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``redis_full_window_s``: not ready while the last OOM refusal is younger than it, ready
    once it is older (the refusals themselves: tests/integration/gateway/test_redis_full.py)."""
    monkeypatch.setattr("server.health.seconds_since_full", lambda: 2.9)
    full = await client.get("/readyz")
    assert full.status_code == 503
    assert full.json()["checks"]["redis_memory"] is False
    assert "seedx_gateway_redis_full 1.0" in (await client.get("/metrics")).text
    monkeypatch.setattr("server.health.seconds_since_full", lambda: 3.1)
    ready = await client.get("/readyz")
    assert ready.json()["checks"]["redis_memory"] is True
    assert "seedx_gateway_redis_full 0.0" in (await client.get("/metrics")).text
