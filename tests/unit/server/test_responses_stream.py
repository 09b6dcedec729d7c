"""Streamed ``/v1/responses``: OpenAI's event names and order, sequence numbers, images,
failures, and the official client's parsers (``create(stream=True)`` and ``stream()``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseStreamEvent

from server.app import create_app
from tests.unit.server.conftest import make_settings
from tests.unit.server.fakes import FakeBackend
from tests.unit.server.test_lifecycle import leave_mid_answer
from workers.protocol import Box, ChatJob, ErrorPayload, Event, Failed, Job, Started, TextDelta

IMAGE_TOOL: Any = {"type": "image_generation", "size": "64x64", "partial_images": 2}


def sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event line, JSON payload)`` of every frame."""
    frames = []
    for frame in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        frames.append((lines["event"], json.loads(lines["data"])))
    return frames


async def test_text_stream_event_order_and_sequence_numbers(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/responses", json={"input": "hi", "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = sse(response.text)
    assert all(name == payload["type"] for name, payload in frames)
    assert [payload["sequence_number"] for _, payload in frames] == list(range(len(frames)))
    assert [name for name, _ in frames] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created, completed = frames[0][1]["response"], frames[-1][1]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []
    assert completed["id"] == created["id"]
    assert completed["status"] == "completed"
    assert frames[6][1]["text"] == "Hello world"
    assert completed["output"][0]["content"][0]["text"] == "Hello world"
    assert "[DONE]" not in response.text


async def test_official_client_parses_every_event(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(input="hi", stream=True)
    events: list[ResponseStreamEvent] = [event async for event in stream]
    assert type(events[0]).__name__ == "ResponseCreatedEvent"
    assert type(events[-1]).__name__ == "ResponseCompletedEvent"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello world"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hello world"
    assert events[-1].response.usage is not None


# The SDK's annotation union does not know "bounding_box": its stream helper re-dumps the final
# output and pydantic warns (the values are kept; only the helper's model_dump complains).
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
async def test_stream_helper_final_response_with_boxes_and_images(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_boxes = (Box(x1=1, y1=2, x2=3, y2=4, image_index=0),)
    backend.llm_images = 2
    async with oai.responses.stream(
        model="seed-x-i",
        input="Draw two",
        tools=[IMAGE_TOOL],
        tool_choice="required",
    ) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "Hello world"
    kinds = [item.type for item in final.output]
    assert kinds == ["message", "image_generation_call", "image_generation_call"]
    message = final.output[0]
    assert message.type == "message"
    assert len(message.content[0].annotations) == 1  # type: ignore[union-attr]
    assert all(item.result for item in final.output[1:])  # type: ignore[union-attr]
    assert types.count("response.output_text.annotation.added") == 1
    assert types.count("response.image_generation_call.partial_image") == 4
    assert types.count("response.image_generation_call.completed") == 2
    assert types[-1] == "response.completed"


async def test_image_events_carry_item_ids_and_previews(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    body = {"input": "Draw", "stream": True, "tools": [IMAGE_TOOL]}
    frames = [payload for _, payload in sse((await client.post("/v1/responses", json=body)).text)]
    added = [f for f in frames if f["type"] == "response.output_item.added"]
    call = next(f for f in added if f["item"]["type"] == "image_generation_call")
    ids = {f["item_id"] for f in frames if f["type"].startswith("response.image_generation_call")}
    assert ids == {call["item"]["id"]}
    image_events = [f["type"] for f in frames if f.get("output_index") == call["output_index"]]
    assert image_events == [
        "response.output_item.added",
        "response.image_generation_call.in_progress",
        "response.image_generation_call.generating",
        "response.image_generation_call.partial_image",
        "response.image_generation_call.partial_image",
        "response.image_generation_call.completed",
        "response.output_item.done",
    ]
    previews = [f for f in frames if f["type"].endswith("partial_image")]
    assert [p["partial_image_index"] for p in previews] == [0, 1]
    assert all(p["partial_image_b64"] and p["output_format"] == "png" for p in previews)
    done = [f for f in frames if f["type"] == "response.output_item.done"]
    image_done = next(f for f in done if f["item"]["type"] == "image_generation_call")
    assert image_done["item"]["status"] == "completed"
    assert image_done["item"]["result"]


async def failing_llm(job: Job, backend: FakeBackend) -> AsyncIterator[Event]:
    yield Started(worker_id="w", queue_wait_s=0)
    yield TextDelta(text="partial")
    yield Failed(
        error=ErrorPayload(code="invalid_request", message="bad image", param="messages[0]")
    )


async def test_failure_mid_stream_is_error_then_response_failed(
    client: httpx.AsyncClient, backend: FakeBackend, oai: openai.AsyncOpenAI
) -> None:
    backend.scripts["llm"] = failing_llm
    response = await client.post("/v1/responses", json={"input": "hi", "stream": True})
    frames = sse(response.text)
    names = [name for name, _ in frames]
    assert names[-2:] == ["error", "response.failed"]
    error = frames[-2][1]
    assert (error["code"], error["param"]) == ("invalid_request", "input")
    failed = frames[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "invalid_request", "message": "bad image"}
    stored = await oai.responses.retrieve(failed["id"])
    assert stored.status == "failed"


async def test_failure_without_stream_is_the_error_status(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.scripts["llm"] = failing_llm
    response = await client.post("/v1/responses", json={"input": "hi"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


async def test_streamed_response_is_stored_before_completed(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    stream = await oai.responses.create(input="hi", stream=True)
    async for event in stream:
        if event.type == "response.completed":
            got = await oai.responses.retrieve(event.response.id)
            assert got.output_text == "Hello world"
            follow = await oai.responses.create(input="more", previous_response_id=got.id)
            assert follow.status == "completed"
    job = backend.jobs_of("chat")[1]
    assert isinstance(job, ChatJob)
    assert [m.role for m in job.messages] == ["user", "assistant", "user"]


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_the_job(backend: FakeBackend, stream: bool) -> None:
    backend.token_delay_s = 0.05
    backend.llm_text = tuple(f"t{i} " for i in range(100))
    app = create_app(make_settings(), backend)
    async with app.router.lifespan_context(app):
        body = {"input": "hi", "stream": stream}
        call = await leave_mid_answer(app, "/v1/responses", body, backend)
    if stream:
        assert "response.output_text.delta" in call.body_text()
        assert "response.completed" not in call.body_text()
