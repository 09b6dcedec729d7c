"""Issue 21, item 2: a lone surrogate in any JSON text field is a 400 naming the field, never a
500 (it used to pass the request models and fail where the text was first encoded)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from server.unicode import invalid_text_at

LONE = "@LONE@"  # replaced by the JSON escape \ud83d: the decoder makes a str no encoder takes
JSON = {"Content-Type": "application/json"}
HI = [{"role": "user", "content": "hi"}]

CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": LONE}]},
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
        "messages[0].content[0].text",
    ),
    ("/v1/chat/completions", {"messages": HI, "stop": [LONE]}, "stop[0]"),
    ("/v1/chat/completions", {"messages": HI, "user": LONE}, "user"),
    ("/v1/responses", {"model": "seed-x-i", "input": LONE}, "input"),
    ("/v1/responses", {"input": "hi", "instructions": LONE}, "instructions"),
    ("/v1/images/generations", {"prompt": f"a {LONE} cat"}, "prompt"),
]


def _with_lone_surrogate(body: dict[str, Any]) -> str:
    return json.dumps(body).replace(LONE, "\\ud83d")


@pytest.mark.parametrize(("path", "body", "param"), CASES)
async def test_a_lone_surrogate_is_a_400_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(path, content=_with_lone_surrogate(body), headers=JSON)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert "surrogate" in error["message"]


async def test_raw_utf8_surrogate_bytes_are_a_400_too(client: httpx.AsyncClient) -> None:
    body = b'{"messages": [{"role": "user", "content": "a\xed\xa0\xbdb"}]}'
    response = await client.post("/v1/chat/completions", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[0].content"


async def test_a_surrogate_pair_and_other_scripts_pass(client: httpx.AsyncClient) -> None:
    body = (
        '{"messages": [{"role": "user", "content": "\\ud83d\\ude00 ok \u05e9\u05dc\u05d5\u05dd"}]}'
    )
    response = await client.post("/v1/chat/completions", content=body.encode(), headers=JSON)
    assert response.status_code == 200, response.text


def test_the_walk_names_keys_and_list_items() -> None:
    assert invalid_text_at({"a": ["ok", {"b": "\ud800"}]}) == ("a", 1, "b")
    assert invalid_text_at({"\udfff": 1}) == ("\\udfff",)  # named printably
    assert invalid_text_at({"a": ["😀", 1, None]}) is None


async def test_a_lone_surrogate_in_a_key_is_named_printably(client: httpx.AsyncClient) -> None:
    """The corpus found this one: the 400 echoed the key, and its own encoding failed (500)."""
    body = '{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}'
    response = await client.post("/v1/chat/completions", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "\\ud800"
