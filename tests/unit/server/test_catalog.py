"""What each model serves (issue 21 item 3): one mapping from (model, endpoint) to a route, 400
naming the endpoints that do serve the model, 503 while a known model has no live worker, or 404;
the same answer on every endpoint, and ``/v1/models`` saying what each model serves."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from server.catalog import Endpoint, StageModel, endpoints_of, route
from server.settings import ModelRouting
from tests.unit.server.fakes import FakeBackend, png_bytes
from workers.errors import InvalidRequest, ModelNotFound

ROUTING = ModelRouting()
CHAT = ("/v1/chat/completions", "/v1/responses")
LLM_OF = {
    "seed-x-i": (*CHAT, "/v1/images/generations"),
    "seed-x-edit": (*CHAT, "/v1/images/edits"),
}


@pytest.mark.parametrize(
    ("model", "stages", "served"),
    [
        ("seed-x-i", {"llm"}, LLM_OF["seed-x-i"]),
        ("seed-x", {"llm"}, LLM_OF["seed-x-i"]),
        ("seed-x-edit", {"llm"}, LLM_OF["seed-x-edit"]),
        ("first_stage", {"diffusion"}, ("/v1/images/variations",)),
        ("second_stage", {"diffusion"}, ("/v1/images/variations",)),
        ("my-llm", {"llm"}, CHAT),  # served by a live worker, no de-tokenizer in the routing
        ("gpt-4o", set(), ()),
    ],
)
def test_endpoints_of_each_model(model: str, stages: set[Any], served: tuple[str, ...]) -> None:
    assert tuple(endpoints_of(ROUTING, model, stages)) == served


def test_route_names_the_queues_of_the_requested_model_then_its_detokenizer() -> None:
    generations = route(ROUTING, "seed-x-i", Endpoint.GENERATIONS, {"llm"})
    assert generations.queues == (
        StageModel("llm", "seed-x-i"),
        StageModel("diffusion", "first_stage"),
    )
    assert generations.detokenizer == "first_stage"
    edits = route(ROUTING, "seed-x-edit", Endpoint.EDITS, {"llm"})
    assert edits.detokenizer == "second_stage"
    assert route(ROUTING, "seed-x-i", Endpoint.CHAT, {"llm"}).queues == (
        StageModel("llm", "seed-x-i"),
    )
    with_images = route(ROUTING, "seed-x-i", Endpoint.RESPONSES, {"llm"}, images=True)
    assert with_images.detokenizer == "first_stage"
    variations = route(ROUTING, "second_stage", Endpoint.VARIATIONS, {"diffusion"})
    assert variations.queues == (StageModel("diffusion", "second_stage"),)


@pytest.mark.parametrize(
    ("model", "endpoint", "stage", "serving"),
    [
        ("first_stage", Endpoint.GENERATIONS, "diffusion", "/v1/images/variations"),
        ("first_stage", Endpoint.EDITS, "diffusion", "/v1/images/variations"),
        ("first_stage", Endpoint.CHAT, "diffusion", "/v1/images/variations"),
        ("seed-x-i", Endpoint.VARIATIONS, "llm", ", ".join(LLM_OF["seed-x-i"])),
        ("seed-x-i", Endpoint.EDITS, "llm", ", ".join(LLM_OF["seed-x-i"])),
        ("seed-x-edit", Endpoint.GENERATIONS, "llm", ", ".join(LLM_OF["seed-x-edit"])),
    ],
)
def test_a_known_model_on_an_endpoint_it_does_not_serve_is_400_naming_those_that_do(
    model: str, endpoint: Endpoint, stage: Any, serving: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        route(ROUTING, model, endpoint, {stage})
    assert info.value.param == "model"
    assert info.value.message.endswith(f"it serves {serving}")
    assert "try" not in info.value.message


def test_a_model_known_nowhere_is_404() -> None:
    with pytest.raises(ModelNotFound) as info:
        route(ROUTING, "gpt-4o", Endpoint.CHAT, set())
    assert info.value.param == "model"
    assert "does not exist" in info.value.message


# --- every endpoint gives the same answer -------------------------------------------------------


async def _post(client: httpx.AsyncClient, endpoint: str, model: str) -> httpx.Response:
    image = {"image": ("a.png", png_bytes(8, 8), "image/png")}
    if endpoint == "/v1/chat/completions":
        body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
        return await client.post(endpoint, json=body)
    if endpoint == "/v1/responses":
        return await client.post(endpoint, json={"model": model, "input": "x"})
    if endpoint == "/v1/images/generations":
        return await client.post(endpoint, json={"model": model, "prompt": "x"})
    if endpoint == "/v1/images/edits":
        return await client.post(endpoint, data={"model": model, "prompt": "x"}, files=image)
    return await client.post(endpoint, data={"model": model}, files=image)


ENDPOINTS = [str(e) for e in Endpoint]


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_each_endpoint_refuses_a_model_it_does_not_serve_with_400_naming_the_ones_that_do(
    client: httpx.AsyncClient, backend: FakeBackend, endpoint: str
) -> None:
    backend.llm_images = 1
    served = {
        "seed-x-i": LLM_OF["seed-x-i"],
        "seed-x-edit": LLM_OF["seed-x-edit"],
        "first_stage": ("/v1/images/variations",),
        "second_stage": ("/v1/images/variations",),
    }
    for model, endpoints in served.items():
        response = await _post(client, endpoint, model)
        if endpoint in endpoints:
            assert response.status_code == 200, (model, response.text)
            continue
        error = _error(response, 400)
        assert error["param"] == "model", (model, error)
        assert error["code"] == "invalid_request"
        assert error["message"].endswith("it serves " + ", ".join(endpoints)), error
        assert "does not serve this endpoint" in error["message"]  # right on /v1/responses too
    assert backend.jobs  # the served ones ran


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_each_endpoint_answers_404_for_an_unknown_model(
    client: httpx.AsyncClient, endpoint: str
) -> None:
    error = _error(await _post(client, endpoint, "gpt-4o"), 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


@pytest.mark.parametrize(
    ("endpoint", "model", "missing"),
    [
        ("/v1/chat/completions", "seed-x-edit", "seed-x-edit"),
        ("/v1/responses", "seed-x-edit", "seed-x-edit"),
        ("/v1/images/edits", "seed-x-edit", "seed-x-edit"),
        ("/v1/images/edits", "seed-x-edit", "second_stage"),
        ("/v1/images/generations", "seed-x", "seed-x"),  # configured, never started
        ("/v1/images/variations", "second_stage", "second_stage"),
    ],
)
async def test_a_configured_model_with_no_live_worker_yet_is_503_with_retry_after(
    client: httpx.AsyncClient, backend: FakeBackend, endpoint: str, model: str, missing: str
) -> None:
    """Loading (never seen by this gateway) or restarting: retry later, not "does not exist"."""
    backend.workers = [w for w in backend.workers if w.model != missing]
    response = await _post(client, endpoint, model)
    error = _error(response, 503)
    assert error["code"] == "unavailable"
    assert repr(missing) in error["message"]
    assert "loading or restarting" in error["message"]
    assert response.headers["Retry-After"] == "1"


async def test_a_live_model_the_routing_does_not_name_chats_but_does_not_draw(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.serve("llm", "my-llm")
    assert (await _post(client, "/v1/chat/completions", "my-llm")).status_code == 200
    error = _error(await _post(client, "/v1/images/generations", "my-llm"), 400)
    assert error["message"].endswith("it serves /v1/chat/completions, /v1/responses")


# --- /v1/models -------------------------------------------------------------------------------


async def test_models_say_which_endpoints_serve_them(client: httpx.AsyncClient) -> None:
    cards = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    assert cards["seed-x-i"]["endpoints"] == list(LLM_OF["seed-x-i"])
    assert cards["seed-x-edit"]["endpoints"] == list(LLM_OF["seed-x-edit"])
    assert cards["first_stage"]["endpoints"] == ["/v1/images/variations"]
    one = (await client.get("/v1/models/second_stage")).json()
    assert one["endpoints"] == ["/v1/images/variations"]


async def test_the_openai_client_parses_the_model_list_and_keeps_the_endpoints(
    oai: openai.AsyncOpenAI,
) -> None:
    models = [model async for model in oai.models.list()]
    assert {m.id for m in models} == {"seed-x-i", "seed-x-edit", "first_stage", "second_stage"}
    by_id = {m.id: m for m in models}
    assert by_id["seed-x-i"].object == "model"
    assert by_id["seed-x-i"].model_extra is not None
    assert by_id["seed-x-i"].model_extra["endpoints"] == list(LLM_OF["seed-x-i"])
    retrieved = await oai.models.retrieve("first_stage")
    assert getattr(retrieved, "endpoints") == ["/v1/images/variations"]  # noqa: B009


async def test_retrieving_a_configured_model_with_no_worker_says_so(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.workers = [w for w in backend.workers if w.model != "seed-x-edit"]
    loading = _error(await client.get("/v1/models/seed-x-edit"), 404)
    assert "no live worker" in loading["message"]
    unknown = _error(await client.get("/v1/models/gpt-4o"), 404)
    assert "does not exist" in unknown["message"]
