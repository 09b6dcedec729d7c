"""End to end: the official openai client against gateway + Redis + the real workers.

The tiny checkpoint has random weights, so answers are noise; what is checked is that every
path works and has OpenAI's shape. Chat *answering with an image* uses the SEED-X extra
``image_options.require``, since a random model does not emit ``<img>`` on its own.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import Stack


def image_data_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 40, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def size_of(b64: str | None) -> tuple[int, int]:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    return image.size


def test_models_list(stack: Stack) -> None:
    ids = {m.id for m in stack.client().models.list().data}
    assert {"seed-x-i", "seed-x-edit", "first_stage", "second_stage"} <= ids


def test_chat_with_a_multi_tile_image(stack: Stack) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(900, 300)}},
                {"type": "text", "text": "Describe the picture. <img></s>"},
            ],
        }
    ]
    answer = stack.client().chat.completions.create(
        model="seed-x-i",
        messages=messages,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    assert answer.object == "chat.completion"
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 132  # more than one 1x1-grid image: several tiles


def test_chat_stream(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_chat_answer_with_an_image_part(stack: Stack) -> None:
    """``image_options.require`` makes the random tiny model open an image (a real SEED-X-I
    answers "Here's an image." + <img> on its own); the answer goes back unchanged next turn."""
    client = stack.client()
    answer = client.chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "Generate an image of a cat."}],
        max_tokens=80,
        extra_body={
            "modalities": ["text", "image"],
            "image_options": {"size": "64x64", "steps": 2, "require": True},
        },
    )
    content = answer.choices[0].message.content
    assert isinstance(content, list)
    images = [p for p in content if p["type"] == "image_url"]
    assert len(images) == 1
    assert images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert size_of(images[0]["image_url"]["url"].split(",", 1)[1]) == (64, 64)
    again = client.chat.completions.create(
        model="seed-x-i",
        messages=[
            {"role": "user", "content": "Generate an image of a cat."},
            answer.choices[0].message.model_dump(exclude_none=True, warnings=False),  # type: ignore[list-item]
            {"role": "user", "content": "Thanks"},
        ],
        max_tokens=4,
    )
    assert again.choices[0].message is not None
    assert again.usage is not None
    assert again.usage.prompt_tokens > 66  # the generated image is in the history


def test_images_generate_b64_and_url(stack: Stack) -> None:
    client = stack.client()
    result = client.images.generate(model="seed-x-i", prompt="a red cube", size="64x64", n=1)
    assert result.data is not None
    assert size_of(result.data[0].b64_json) == (64, 64)
    by_url = client.images.generate(prompt="a red cube", size="64x64", response_format="url")
    assert by_url.data is not None
    url = by_url.data[0].url
    assert url is not None
    import httpx

    content = httpx.get(url, headers={"Authorization": f"Bearer {client.api_key}"}, timeout=30)
    assert content.status_code == 200
    assert Image.open(io.BytesIO(content.content)).size == (64, 64)


def test_images_generate_streams_partial_images(stack: Stack) -> None:
    stream = stack.client().images.generate(
        prompt="a tree", size="64x64", stream=True, partial_images=1, extra_body={"steps": 3}
    )
    types = [event.type for event in stream]
    assert types[-1] == "image_generation.completed"
    assert "image_generation.partial_image" in types


def test_images_edit(stack: Stack) -> None:
    result = stack.client().images.edit(
        image=("src.png", png(64, 64), "image/png"), prompt="make it blue", size="64x64"
    )
    assert result.data is not None
    assert size_of(result.data[0].b64_json) == (64, 64)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_images_create_variation(stack: Stack) -> None:
    result = stack.client().images.create_variation(
        image=("src.png", png(64, 64), "image/png"),
        size="64x64",
        n=1,  # type: ignore[arg-type]
    )
    assert result.data is not None
    assert size_of(result.data[0].b64_json) == (64, 64)


def test_generated_images_can_be_sent_back_in_a_chat(stack: Stack) -> None:
    """An assistant turn with image parts (data URL and our content URL) is accepted as is."""
    client = stack.client()
    b64 = client.images.generate(prompt="a cat", size="64x64").data[0].b64_json  # type: ignore[index]
    url = client.images.generate(prompt="a cat", size="64x64", response_format="url").data[0].url  # type: ignore[index]
    assistant = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Here is a cat."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }
    answer = client.chat.completions.create(
        model="seed-x-i",
        messages=[
            {"role": "user", "content": "Draw a cat."},
            assistant,  # type: ignore[list-item]
            {"role": "user", "content": "Make it smaller."},
        ],
        max_tokens=4,
    )
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 2 * 66  # both images are in the prompt


def test_chat_logprobs_from_the_vllm_worker(stack: Stack) -> None:
    answer = stack.client().chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
    )
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content
    for entry in content:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
    stream = stack.client().chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        logprobs=True,
        stream=True,
    )
    streamed = [
        entry
        for chunk in stream
        for choice in chunk.choices
        if choice.logprobs is not None and choice.logprobs.content
        for entry in choice.logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]  # greedy: the same tokens


def test_chat_json_schema_answer_from_the_vllm_worker(stack: Stack) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 8},
            "x1": {"type": "integer", "minimum": 0, "maximum": 999},
        },
        "required": ["label", "x1"],
        "additionalProperties": False,
    }
    answer = stack.client().chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "Where is the cat? Answer as JSON."}],
        max_tokens=100,
        temperature=1.0,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "box", "schema": schema}},
    )
    assert answer.choices[0].finish_reason == "stop"
    value = json.loads(answer.choices[0].message.content or "")
    assert set(value) == {"label", "x1"}
    assert 0 <= value["x1"] <= 999


def test_chat_logit_bias_through_the_gateway(stack: Stack, serving_tree: Path) -> None:
    from engine.tokenizer import SeedXTokenizer

    brace = SeedXTokenizer(serving_tree / "seed-x-i").encode_user_text("}")[-1]
    answer = stack.client().chat.completions.create(
        model="seed-x-i",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        logit_bias={str(brace): 100},
    )
    assert answer.choices[0].message.content == "}}}}"


def test_images_quality_picks_the_steps(stack: Stack) -> None:
    """quality "high" is twice the gateway's default steps (2 here): the same image as steps=4."""
    client = stack.client()

    def draw(**options: object) -> str:
        result = client.images.generate(
            prompt="a red cube", size="64x64", extra_body={"seed": 5, **options}
        )
        assert result.data is not None
        return str(result.data[0].b64_json)

    assert draw(quality="high") == draw(steps=4)
    assert draw(quality="low") != draw(quality="high")
