"""Issue 21, items 6-7: what cannot be honoured is a 400 naming the parameter, before the first
byte, streamed or not: ``image_options.require`` without the image modality (it was silently
ignored), and a token budget that cannot hold the required image (streams got 200 and then an
error frame; the Responses error named ``max_tokens`` while its ``param`` said
``max_output_tokens``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.rendering import IMAGE_BLOCK_TOKENS

USER = [{"role": "user", "content": "draw a cube"}]


def test_the_gateway_knows_the_image_block_length() -> None:
    from engine.arch import IMAGE_BLOCK_TOKENS as ENGINE_BLOCK

    assert IMAGE_BLOCK_TOKENS == ENGINE_BLOCK


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"image_options": {"require": True}}, "image_options.require", "modalities"),
        (
            {"image_options": {"require": True}, "modalities": ["text", "image"], "max_tokens": 10},
            "max_tokens",
            "max_tokens must be at least 66",
        ),
        (
            {
                "image_options": {"require": True},
                "modalities": ["text", "image"],
                "max_completion_tokens": 65,
            },
            "max_completion_tokens",
            "max_completion_tokens must be at least 66",
        ),
    ],
)
async def test_chat_refuses_before_the_first_byte(
    client: httpx.AsyncClient, body: dict[str, Any], param: str, words: str, stream: bool
) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"messages": USER, "stream": stream, **body}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_name_max_output_tokens_in_param_and_message(
    client: httpx.AsyncClient, stream: bool
) -> None:
    response = await client.post(
        "/v1/responses",
        json={
            "input": "draw a cube",
            "stream": stream,
            "max_output_tokens": 20,
            "tools": [{"type": "image_generation"}],
            "tool_choice": "required",
        },
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_output_tokens"
    assert error["message"].startswith("max_output_tokens must be at least 66"), error


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_that_is_not_json_says_so(
    client: httpx.AsyncClient, content_type: str
) -> None:
    """Issue 21, item 9: ``curl -d`` without a Content-Type got "Input should be a valid
    dictionary" with no hint of what to change."""
    response = await client.post(
        "/v1/chat/completions",
        content=b'{"messages": [{"role": "user", "content": "hi"}]}',
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["error"]["message"]


async def test_an_unknown_path_is_logged_with_its_path(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="server.metrics"):
        response = await client.get("/v1/nowhere/at-all")
    assert response.status_code == 404
    assert any("GET /v1/nowhere/at-all -> 404" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("key", ["²", "１２", "-1", ""])
async def test_a_logit_bias_key_that_is_no_token_id_is_a_400(
    client: httpx.AsyncClient, key: str
) -> None:
    """ "²" passed ``str.isdigit`` and failed ``int()``: a 500 the hostile corpus found."""
    response = await client.post(
        "/v1/chat/completions", json={"messages": USER, "logit_bias": {key: 1}}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "logit_bias"
