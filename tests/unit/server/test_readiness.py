"""Readiness per model (issue 21 item 4): ``/readyz`` lists every known model and whether a
request for it would be accepted now, ``/readyz?model=NAME`` answers for one, and
``models.readiness`` names the models whose absence makes ``/readyz`` itself 503."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.catalog import Endpoint, ModelState, readiness_checks
from server.settings import ModelRouting
from tests.unit.server.conftest import make_settings
from tests.unit.server.fakes import FakeBackend

DEMO = ["seed-x-i", "seed-x-edit", "first_stage", "second_stage"]


def _drop(backend: FakeBackend, model: str) -> None:
    backend.workers = [w for w in backend.workers if w.model != model]


async def test_readyz_lists_each_known_model(client: httpx.AsyncClient) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    models = ready.json()["models"]
    assert models["seed-x-i"] == {
        "stage": "llm",
        "ready": True,
        "workers": 1,
        "endpoints": ["/v1/chat/completions", "/v1/responses", "/v1/images/generations"],
    }
    assert models["second_stage"]["endpoints"] == ["/v1/images/variations"]
    # named by the routing (its de-tokenizer map), never started: known, not ready
    assert models["seed-x"] == {
        "stage": "llm",
        "ready": False,
        "workers": 0,
        "endpoints": ["/v1/chat/completions", "/v1/responses", "/v1/images/generations"],
    }


async def test_a_model_without_workers_is_not_ready_while_the_others_are(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """The LLM worker of seed-x-edit died: that model is not ready, the gateway still serves
    seed-x-i (its readiness probe stays 200 by default), requests for seed-x-edit get 503."""
    _drop(backend, "seed-x-edit")
    overall = await client.get("/readyz")
    assert overall.status_code == 200, overall.text
    assert overall.json()["models"]["seed-x-edit"]["ready"] is False
    assert overall.json()["models"]["seed-x-edit"]["workers"] == 0

    one = await client.get("/readyz", params={"model": "seed-x-edit"})
    assert one.status_code == 503
    assert one.json()["checks"] == {
        "redis": True,
        "reply_reader": True,
        "redis_memory": True,
        "model": False,
    }
    assert list(one.json()["models"]) == ["seed-x-edit"]
    assert (await client.get("/readyz", params={"model": "seed-x-i"})).status_code == 200

    chat = {"model": "seed-x-edit", "messages": [{"role": "user", "content": "x"}]}
    refused = await client.post("/v1/chat/completions", json=chat)
    assert refused.status_code == 503
    assert "Retry-After" in refused.headers

    backend.serve("llm", "seed-x-edit")  # restarted
    assert (await client.get("/readyz", params={"model": "seed-x-edit"})).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200


async def test_readyz_for_an_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz", params={"model": "gpt-4o"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_readyz_for_one_model_is_503_while_redis_is_down(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.redis_up = False
    response = await client.get("/readyz", params={"model": "seed-x-i"})
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] is False


@pytest.mark.parametrize("settings", [make_settings(models={"readiness": DEMO})])
async def test_models_listed_for_readiness_make_readyz_503_while_one_has_no_worker(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """What ``seedx serve`` configures: ready only when every model it started is served."""
    assert (await client.get("/readyz")).status_code == 200
    _drop(backend, "seed-x-edit")
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["models"] is False
    assert not_ready.json()["checks"]["workers_llm"] is True
    backend.serve("llm", "seed-x-edit")
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    "settings", [make_settings(admission={"directory_ttl_s": 0, "scale_to_zero": ["diffusion"]})]
)
async def test_a_model_on_a_stage_that_scales_to_zero_is_ready_without_workers(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.workers = [w for w in backend.workers if w.stage == "llm"]
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"]["first_stage"] == {
        "stage": "diffusion",
        "ready": True,
        "workers": 0,
        "endpoints": ["/v1/images/variations"],
    }


def _state(model: str, stage: Any, ready: bool) -> ModelState:
    return ModelState(model, stage, int(ready), ready, (Endpoint.CHAT,))


@pytest.mark.parametrize(
    ("states", "readiness", "scaled", "expected"),
    [
        (
            [_state("a", "llm", True), _state("d", "diffusion", True)],
            (),
            (),
            {"workers_llm": True, "workers_diffusion": True},
        ),
        (
            [_state("a", "llm", True), _state("b", "llm", False), _state("d", "diffusion", True)],
            (),
            (),
            {"workers_llm": True, "workers_diffusion": True},
        ),
        (
            [_state("a", "llm", True), _state("b", "llm", False), _state("d", "diffusion", True)],
            ("a", "b"),
            (),
            {"workers_llm": True, "workers_diffusion": True, "models": False},
        ),
        (
            [_state("a", "llm", True), _state("d", "diffusion", False)],
            (),
            (),
            {"workers_llm": True, "workers_diffusion": False},
        ),
        (
            [_state("a", "llm", True)],
            ("a",),
            ("diffusion",),
            {"workers_llm": True, "workers_diffusion": True, "models": True},
        ),
        (
            [_state("a", None, False)],
            ("a",),
            (),
            {"workers_llm": False, "workers_diffusion": False, "models": False},
        ),
    ],
)
def test_readiness_checks(
    states: list[ModelState],
    readiness: tuple[str, ...],
    scaled: tuple[str, ...],
    expected: dict[str, bool],
) -> None:
    routing = ModelRouting(readiness=readiness)
    assert readiness_checks(states, routing, scaled) == expected
