"""``/v1/chat/completions`` against the fake backend, mostly through the official openai client."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import openai
import pytest

from server.app import create_app
from server.metrics import IMAGES_DECODED
from tests.unit.server.conftest import AUTH, make_settings
from tests.unit.server.fakes import FakeBackend, png_bytes
from workers.errors import DeadlineExceeded, Overloaded, Unavailable
from workers.protocol import Box, ChatJob, ImageGenerateJob, ImagePart, TextPart

PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def user(text: str, *images: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return {"role": "user", "content": parts}


def sse_events(body: str) -> list[Any]:
    """The JSON payloads of an SSE body; ``"[DONE]"`` kept as the string."""
    events: list[Any] = []
    for frame in body.strip().split("\n\n"):
        data = [line[6:] for line in frame.splitlines() if line.startswith("data: ")]
        if data:
            events.append("[DONE]" if data[0] == "[DONE]" else json.loads(data[0]))
    return events


async def test_non_streamed_answer_in_openai_shape(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    answer = await oai.chat.completions.create(
        model="seed-x-i",
        messages=[user("What is this?", PNG_URL)],
        max_tokens=20,
        temperature=0.2,
        top_p=0.9,
        stop=["\n"],
        seed=5,
        user="u-1",
        presence_penalty=0.5,
        frequency_penalty=-0.25,
    )
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.content == "Hello world"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (7, 9)
    (job,) = backend.jobs
    assert isinstance(job, ChatJob)
    assert job.model == "seed-x-i"
    assert job.task == "chat"
    assert not job.allow_image_output
    s = job.sampling
    assert (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed, s.n) == (
        0.2,
        0.9,
        20,
        ("\n",),
        5,
        1,
    )
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.25)
    text, image = job.messages[0].content
    assert text == TextPart(text="What is this?")
    assert isinstance(image, ImagePart)
    assert (image.width, image.height) == (32, 24)
    await asyncio.sleep(0.01)  # cleanup runs in the background
    assert backend.blobs.released == [job.request_id]
    assert image.image.key not in backend.blobs.data


async def test_stream_chunks_usage_and_done(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        n=2,
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = {0: "", 1: ""}
    finish: dict[int, str | None] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        text[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
        assert chunk.usage is None
    assert text == {0: "Hello world", 1: "Hello world"}
    assert finish == {0: "stop", 1: "stop"}
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_stream_without_usage_has_no_usage_key(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


async def test_boxes_become_annotations(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.llm_boxes = (Box(x1=1, y1=2, x2=10, y2=20, image_index=0),)
    body = {"messages": [user("Where?", PNG_URL)]}
    answer = (await client.post("/v1/chat/completions", json=body)).json()
    (note,) = answer["choices"][0]["message"]["annotations"]
    assert note == {
        "type": "bounding_box",
        "bounding_box": {"x1": 1, "y1": 2, "x2": 10, "y2": 20, "image_index": 0, "label": None},
    }
    streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in sse_events(streamed.text)[:-1] if e["choices"]]
    (annotations,) = [d["annotations"] for d in deltas if "annotations" in d]
    assert annotations == [{"index": 0, **note}]


async def test_image_answer_is_a_content_part_that_can_be_sent_back(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    first_turn = [{"role": "user", "content": "Draw a cat"}]
    body = {
        "messages": first_turn,
        "modalities": ["text", "image"],
        "image_options": {"size": "64x128", "steps": 3, "seed": 11},
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    text, image = message["content"]
    assert text == {"type": "text", "text": "Hello world"}
    assert image["type"] == "image_url"
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    diffusion = backend.jobs_of("image.generate")
    assert len(diffusion) == 1
    job = diffusion[0]
    assert isinstance(job, ImageGenerateJob)
    assert (job.model, job.width, job.height, job.steps, job.seed) == (
        "first_stage",
        64,
        128,
        3,
        11,
    )

    backend.jobs.clear()
    second = {"messages": [*first_turn, message, {"role": "user", "content": "Bigger"}]}
    assert (await client.post("/v1/chat/completions", json=second)).status_code == 200
    assistant = backend.jobs[0].messages[1]
    assert assistant.role == "assistant"
    assert [p.type for p in assistant.content] == ["text", "image"]


async def test_streamed_images_accumulate_and_can_be_sent_back(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 2
    stream = await oai.chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "Two cats"}],
        stream=True,
        extra_body={"modalities": ["text", "image"], "image_options": {"response_format": "url"}},
    )
    images = []
    async for chunk in stream:
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            images += extra.get("images", [])
    assert [entry["index"] for entry in images] == [0, 1]
    assert all("/v1/images/" in entry["image_url"]["url"] for entry in images)
    backend.jobs.clear()
    assistant = {"role": "assistant", "content": "Hello world", "images": images}
    await oai.chat.completions.create(
        model="seed-x-i", messages=[{"role": "user", "content": "x"}, assistant]
    )
    content = backend.jobs[0].messages[1].content
    assert [p.type for p in content] == ["text", "image", "image"]


async def test_special_token_strings_reach_the_worker_unchanged(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    text = "<img><img_00000></img><patch></s><box_start><loc-3><box_end>[INST]"
    await oai.chat.completions.create(
        model="seed-x-i", messages=[{"role": "user", "content": text}]
    )
    assert backend.jobs[0].messages[0].content == (TextPart(text=text),)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"cat": 3}}, "logit_bias"),
        ({"logit_bias": {"12": 101}}, "logit_bias.12"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "json_object"}, "modalities": ["image"]}, "response_format"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"store": True}, "store"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"top_k": 5}, "top_k"),  # not OpenAI's: unknown, never silently ignored
        ({"n": 9}, "n"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "seed-x-edit", "modalities": ["image"]}, "messages"),
        ({"modalities": ["image"], "image_options": {"size": "65x64"}}, "image_options.size"),
    ],
)
async def test_unsupported_or_out_of_bounds_parameters_are_400(
    client: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_tool_messages_are_400_with_param(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("messages[0]")


async def test_a_model_whose_workers_just_vanished_is_503_not_404(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    """Heartbeats gone for a moment (workers restarting, Redis restarted): retry, not 404."""
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    backend.workers = [w for w in backend.workers if w.model != "seed-x-i"]
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    never_known = {"model": "seed-x-17b", "messages": body["messages"]}  # not in the routing
    assert (await client.post("/v1/chat/completions", json=never_known)).status_code == 404


async def test_unknown_model_is_404(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await oai.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"


async def test_full_queue_is_429_before_any_image_is_decoded(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.loads[("llm", "seed-x-i")] = 256
    before = IMAGES_DECODED._value.get()
    response = await client.post("/v1/chat/completions", json={"messages": [user("x", PNG_URL)]})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "overloaded"
    assert IMAGES_DECODED._value.get() == before
    assert backend.blobs.data == {}
    assert backend.jobs == []


async def test_queue_bound_counts_local_admissions(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.loads[("llm", "seed-x-i")] = 255
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_requests_refused_before_queueing_give_their_admission_back(
    backend: FakeBackend,
) -> None:
    """Bad requests admitted within one queue-depth read must not fill the local estimate
    (issue 9: the SSRF matrix hit spurious 429s after 8 refused URLs in 50 ms)."""
    settings = make_settings(admission={"llm_max_queue": 2, "stats_ttl_s": 5})
    app = create_app(settings, backend)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    bad = {"messages": [user("x", "data:image/png;base64,%%%")]}
    good = {"messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
        for _ in range(5):
            assert (await c.post("/v1/chat/completions", json=bad)).status_code == 400
        assert (await c.post("/v1/chat/completions", json=good)).status_code == 200
        assert (await c.post("/v1/chat/completions", json=good)).status_code == 200
        assert (await c.post("/v1/chat/completions", json=good)).status_code == 429


@pytest.mark.parametrize(
    ("error", "status"),
    [(Overloaded("full"), 429), (Unavailable("down"), 503), (DeadlineExceeded("late"), 504)],
)
async def test_transport_errors_map_to_statuses(
    client: httpx.AsyncClient, backend: FakeBackend, error: Exception, status: int
) -> None:
    backend.submit_error = error  # type: ignore[assignment]
    response = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_reply_reader_down_is_503_at_once(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.connected = False
    response = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 503
    assert backend.jobs == []


async def test_too_many_images_is_400(client: httpx.AsyncClient) -> None:
    body = {"messages": [user("x", *[PNG_URL] * 9)]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


async def test_bad_image_names_its_part(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    body = {"messages": [user("x", PNG_URL, "data:image/png;base64,!!!")]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[2].image_url"
    assert backend.jobs == []


def test_gateway_size_rule_is_the_de_tokenizers() -> None:
    """The gateway refuses what the de-tokenizer cannot sample, and nothing it can."""
    from engine.sampling import SIZE_MULTIPLE
    from server import rendering
    from server.settings import Bounds

    assert rendering.SIZE_MULTIPLE == SIZE_MULTIPLE
    assert rendering.parse_size("1024x576", Bounds()) == (1024, 576)
    with pytest.raises(rendering.InvalidRequest) as refused:
        rendering.parse_size("1000x1000", Bounds())
    assert refused.value.param == "size"
    assert "multiple of 64" in str(refused.value)
