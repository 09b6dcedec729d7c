"""``/v1/responses`` against the fake backend, through the official openai client where it can."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.unit.server.fakes import FakeBackend, png_bytes
from workers.protocol import Box, ChatJob, Done, ImageGenerateJob, ImagePart, TextPart

PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
BAD_IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,!!"}
TEXT = {"type": "input_text", "text": "x"}
IMAGE_TOOL: Any = {"type": "image_generation", "size": "64x128", "quality": "high"}
OPAQUE_PNG_TOOL: Any = {**IMAGE_TOOL, "output_format": "png", "background": "opaque"}


def user(*parts: dict[str, Any]) -> Any:
    return {"role": "user", "content": list(parts)}


def chat_job(backend: FakeBackend, index: int = 0) -> ChatJob:
    job = backend.jobs_of("chat")[index]
    assert isinstance(job, ChatJob)
    return job


async def test_string_input_answers_a_response_object(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    response = await oai.responses.create(
        model="seed-x-i",
        input="Hi there",
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=20,
        user="u-1",
        metadata={"k": "v"},
        truncation="disabled",
        parallel_tool_calls=False,
        text={"format": {"type": "text"}},
        include=[],
    )
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Hello world"
    (message,) = response.output
    assert message.type == "message"
    assert message.status == "completed"
    assert message.id.startswith("msg_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 2)
    assert response.usage.total_tokens == 9
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.metadata == {"k": "v"}
    assert (response.temperature, response.top_p, response.user) == (0.3, 0.9, "u-1")
    assert response.model == "seed-x-i"
    job = chat_job(backend)
    assert job.messages[0].role == "user"
    assert job.messages[0].content == (TextPart(text="Hi there"),)
    s = job.sampling
    assert (s.temperature, s.top_p, s.max_tokens) == (0.3, 0.9, 20)
    assert not job.allow_image_output


async def test_items_with_images_and_instructions_become_chat_messages(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    await oai.responses.create(
        model="seed-x-i",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Answer in English."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "A red square.", "annotations": []}],
            },
            {"role": "user", "content": "Sure?"},
        ],
    )
    job = chat_job(backend)
    roles = [m.role for m in job.messages]
    assert roles == ["system", "system", "user", "assistant", "user"]
    assert job.messages[0].content == (TextPart(text="Be brief."),)
    text, image = job.messages[2].content
    assert text == TextPart(text="What is this?")
    assert isinstance(image, ImagePart)
    assert (image.width, image.height) == (32, 24)
    assert job.messages[3].content == (TextPart(text="A red square."),)


async def test_boxes_are_annotations_of_the_output_text(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.llm_boxes = (Box(x1=1, y1=2, x2=10, y2=20, image_index=0, label="cat"),)
    body = {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Where?"},
                    {"type": "input_image", "image_url": PNG_URL},
                ],
            }
        ]
    }
    answer = (await client.post("/v1/responses", json=body)).json()
    part = answer["output"][0]["content"][0]
    assert part["type"] == "output_text"
    assert part["annotations"] == [
        {
            "type": "bounding_box",
            "bounding_box": {
                "x1": 1,
                "y1": 2,
                "x2": 10,
                "y2": 20,
                "image_index": 0,
                "label": "cat",
            },
        }
    ]


async def test_image_generation_tool_draws_images(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    response = await oai.responses.create(
        model="seed-x-i",
        input="Draw a cat",
        tools=[OPAQUE_PNG_TOOL],
        tool_choice={"type": "image_generation"},
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["message", "image_generation_call"]
    call = response.output[1]
    assert call.type == "image_generation_call"
    assert call.status == "completed"
    assert call.id.startswith("ig_")
    assert call.result is not None
    assert Image.open(io.BytesIO(base64.b64decode(call.result))).size == (64, 128)
    assert (call.size, call.output_format, call.quality) == ("64x128", "png", "high")
    job = chat_job(backend)
    assert job.allow_image_output
    assert job.require_image
    (diffusion,) = backend.jobs_of("image.generate")
    assert isinstance(diffusion, ImageGenerateJob)
    assert (diffusion.width, diffusion.height) == (64, 128)
    assert diffusion.steps == 4  # high: twice the default (2 in these tests)


@pytest.mark.parametrize(("quality", "steps"), [("low", 1), ("medium", 2), ("auto", 2)])
async def test_quality_maps_to_steps(
    client: httpx.AsyncClient, backend: FakeBackend, quality: str, steps: int
) -> None:
    backend.llm_images = 1
    tool = {"type": "image_generation", "quality": quality}
    body = {"input": "Draw", "tools": [tool]}
    assert (await client.post("/v1/responses", json=body)).status_code == 200
    (diffusion,) = backend.jobs_of("image.generate")
    assert isinstance(diffusion, ImageGenerateJob)
    assert diffusion.steps == steps


async def test_without_the_tool_no_image_is_allowed(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    answer = (await client.post("/v1/responses", json={"input": "Draw"})).json()
    assert [item["type"] for item in answer["output"]] == ["message"]
    assert not chat_job(backend).allow_image_output
    none = {"input": "Draw", "tools": [IMAGE_TOOL], "tool_choice": "none"}
    assert (await client.post("/v1/responses", json=none)).status_code == 200
    assert not chat_job(backend, 1).allow_image_output


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{**IMAGE_TOOL, "background": "transparent"}]}, "tools[0].background"),
        ({"tools": [{**IMAGE_TOOL, "size": "65x64"}]}, "tools[0].size"),
        ({"tools": [{**IMAGE_TOOL, "partial_images": 4}]}, "tools[0].partial_images"),
        ({"tools": [{**IMAGE_TOOL, "input_fidelity": "high"}]}, "tools[0].input_fidelity"),
        ({"tools": [{**IMAGE_TOOL, "output_compression": 50}]}, "tools[0].output_compression"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "f"}}, "tool_choice"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        (
            {"text": {"format": {"type": "json_object"}}, "tools": [{"type": "image_generation"}]},
            "text.format",
        ),
        ({"truncation": "auto"}, "truncation"),
        ({"max_output_tokens": 100_000}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"model": "seed-x-edit", "tools": [IMAGE_TOOL]}, "input"),
        ({"input": [{"role": "assistant", "content": "x"}]}, "input"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].type"),
        ({"input": [user({"type": "input_file", "file_id": "f"})]}, "input[0].content[0]"),
        ({"input": [user({"type": "input_image", "file_id": "f"})]}, "input[0].content[0].file_id"),
        ({"input": [{"role": "user", "content": "x", "colour": "red"}]}, "input[0].colour"),
        ({"input": [user(BAD_IMAGE)]}, "input[0].content[0].image_url"),
        ({"input": [user(TEXT), user(TEXT, BAD_IMAGE)]}, "input[1].content[1].image_url"),
    ],
)  # fmt: skip
async def test_refusals_name_their_parameter(
    client: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    body = {"input": "hi", **extra}
    response = await client.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


async def test_unknown_previous_response_is_openais_400(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await oai.responses.create(input="x", previous_response_id="resp_nope")
    assert info.value.code == "previous_response_not_found"


async def test_unknown_model_is_404(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await oai.responses.create(model="gpt-4o", input="x")


async def test_store_retrieve_and_continue_with_previous_response_id(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    first = await oai.responses.create(
        model="seed-x-i",
        instructions="Only for the first turn.",
        input=[
            user(
                {"type": "input_text", "text": "Look"},
                {"type": "input_image", "image_url": PNG_URL},
            )
        ],
        tools=[IMAGE_TOOL],
    )
    got = await oai.responses.retrieve(first.id)
    assert got.model_dump() == first.model_dump()

    second = await oai.responses.create(
        model="seed-x-i", input="And now?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    job = chat_job(backend, 1)
    assert [m.role for m in job.messages] == ["user", "assistant", "user"]  # no instructions
    look, image = job.messages[0].content
    assert look == TextPart(text="Look")
    assert isinstance(image, ImagePart)
    text, drawn = job.messages[1].content
    assert text == TextPart(text="Hello world")
    assert isinstance(drawn, ImagePart)
    assert (drawn.width, drawn.height) == (64, 128)
    assert job.messages[2].content == (TextPart(text="And now?"),)

    third = await oai.responses.create(input="Third", previous_response_id=second.id)
    job = chat_job(backend, 2)
    assert [m.role for m in job.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert third.output_text == "Hello world"

    await oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError):
        await oai.responses.create(input="x", previous_response_id=first.id)
    assert (await oai.responses.retrieve(second.id)).id == second.id  # self-contained records


async def test_output_items_can_be_sent_back_as_input(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    first = await oai.responses.create(input="Draw", tools=[IMAGE_TOOL], store=False)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(first.id)
    items: list[Any] = [item.model_dump(exclude_none=True) for item in first.output]
    await oai.responses.create(
        input=[{"role": "user", "content": "Draw"}, *items, {"role": "user", "content": "More"}]
    )
    job = chat_job(backend, 1)
    assert [m.role for m in job.messages] == ["user", "assistant", "user"]
    assert [p.type for p in job.messages[1].content] == ["text", "image"]


async def test_unknown_response_is_404(client: httpx.AsyncClient) -> None:
    for method in ("GET", "DELETE"):
        response = await client.request(method, "/v1/responses/resp_missing")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


async def test_incomplete_when_max_output_tokens_cut_it(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    original = backend.scripts["llm"]

    async def cut(job: Any, fake: FakeBackend) -> Any:
        async for event in original(job, fake):
            if isinstance(event, Done):
                event = Done(finish_reasons=("length",))
            yield event

    backend.scripts["llm"] = cut
    answer = (await client.post("/v1/responses", json={"input": "x"})).json()
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["output"][0]["status"] == "incomplete"


async def test_text_format_json_schema_reaches_the_worker(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    schema = {"type": "object", "properties": {"x1": {"type": "integer"}}, "required": ["x1"]}
    response = await oai.responses.create(
        model="seed-x-i",
        input="boxes please",
        text={"format": {"type": "json_schema", "name": "box", "schema": schema, "strict": True}},
    )
    structured = backend.jobs[0].sampling.structured  # type: ignore[union-attr]
    assert structured is not None
    assert json.loads(structured.json_schema or "") == schema
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"
