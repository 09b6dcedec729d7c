"""End to end: ``client.responses`` against gateway + Redis + the real workers.

The tiny checkpoint has random weights, so answers are noise; what is checked is that every path
works and has OpenAI's shape. Image output uses ``tool_choice="required"`` (the chat path's
``require``), since a random model does not emit ``<img>`` on its own.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from PIL import Image

from tests.e2e.conftest import KEY, Stack
from tests.e2e.test_openai_client import image_data_url
from tests.tools import missing_tool

LOOK: Any = {
    "role": "user",
    "content": [
        {"type": "input_image", "image_url": image_data_url(900, 300)},
        {"type": "input_text", "text": "Describe the picture."},
    ],
}
IMAGE_TOOL: Any = {"type": "image_generation", "size": "64x64", "quality": "low"}


def test_responses_plain_text(stack: Stack) -> None:
    response = stack.client().responses.create(
        model="seed-x-i", input="Hello", max_output_tokens=8, temperature=0
    )
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert [item.type for item in response.output] == ["message"]
    assert isinstance(response.output_text, str)
    assert response.usage is not None
    assert response.usage.output_tokens >= 1


def test_responses_streamed(stack: Stack) -> None:
    stream = stack.client().responses.create(
        model="seed-x-i", input="Hello", max_output_tokens=8, stream=True
    )
    events = list(stream)
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text


def test_responses_with_an_input_image(stack: Stack) -> None:
    response = stack.client().responses.create(
        model="seed-x-i",
        instructions="Answer briefly.",
        input=[LOOK],
        max_output_tokens=8,
    )
    assert response.usage is not None
    assert response.usage.input_tokens > 132  # more than one 1x1-grid image: several tiles


def test_responses_image_generation_then_previous_response_id(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(
        model="seed-x-i",
        input="Generate an image of a cat.",
        tools=[IMAGE_TOOL],
        tool_choice="required",
        max_output_tokens=80,
    )
    calls = [item for item in first.output if item.type == "image_generation_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.status == "completed"
    assert call.result is not None
    assert Image.open(io.BytesIO(base64.b64decode(call.result))).size == (64, 64)
    assert client.responses.retrieve(first.id).id == first.id

    second = client.responses.create(
        model="seed-x-i", input="Thanks", previous_response_id=first.id, max_output_tokens=4
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None
    assert second.usage.input_tokens > 66  # the generated image is in the history


def test_responses_from_the_node_client(stack: Stack, tmp_path: Path) -> None:
    """examples/node/responses.mjs with the official ``openai`` npm package (locked version)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing_tool("node and npm are not installed")
    from tests.e2e.serve.test_node_example import EXAMPLE, npm_install

    npm_install()
    result = subprocess.run(
        ["node", str(EXAMPLE / "responses.mjs")],
        cwd=tmp_path,
        env={
            **os.environ,
            "OPENAI_BASE_URL": f"{stack.base_url}/v1",
            "OPENAI_API_KEY": KEY,
            "SEEDX_IMAGE_SIZE": "64x64",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "plain: " in result.stdout
    assert "streamed: " in result.stdout
    assert "image: 64x64 png" in result.stdout
    assert "follow-up: true" in result.stdout
    with Image.open(tmp_path / "responses-cat.png") as image:
        assert image.size == (64, 64)
