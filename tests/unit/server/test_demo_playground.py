"""What the playground learns from the gateway (issue 22 item 4): ``/v1/models`` says when the
models are ``seedx serve``'s tiny demo (``demo: true``, from the gateway's ``demo`` setting,
which ``seedx serve`` sets exactly when it serves the demo), and the page's favicon is served
without a key so the browser logs no 404."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import pytest

from seedx.serve import add_parser, build_specs
from server.settings import GatewaySettings
from tests.unit.server.conftest import make_settings


@pytest.fixture(params=[False, True], ids=["real", "demo"])
def settings(request: pytest.FixtureRequest) -> GatewaySettings:
    return make_settings(demo=request.param)


async def test_every_model_card_carries_the_demo_setting(
    client: httpx.AsyncClient, settings: GatewaySettings
) -> None:
    cards = (await client.get("/v1/models")).json()["data"]
    assert {card["id"] for card in cards} == {
        "seed-x-i", "seed-x-edit", "first_stage", "second_stage"
    }  # fmt: skip
    assert [card["demo"] for card in cards] == [settings.demo] * len(cards)
    one = (await client.get("/v1/models/seed-x-i")).json()
    assert one["demo"] is settings.demo
    assert one["endpoints"]  # the other SEED-X fields are still there


def test_demo_is_off_unless_set() -> None:
    assert GatewaySettings(allow_unauthenticated=True).demo is False


def serve_arguments() -> argparse.Namespace:
    """``seedx serve``'s arguments with every default, from its own parser."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve"])


@pytest.mark.parametrize("demo", [False, True])
def test_seedx_serve_tells_the_gateway_whether_it_serves_the_demo(
    demo: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The gateway's env as ``seedx serve`` builds it, read by the gateway's settings class."""
    manifest = {
        "models": {name: {"path": name} for name in ("seed-x-i", "seed-x-edit")},
        "detokenizers": {"first_stage": {}, "second_stage": {}},
    }
    args = serve_arguments()
    specs = build_specs(tmp_path, manifest, "redis://x/0", args, demo=demo)
    gateway_env = next(spec for spec in specs if spec.name == "gateway").env
    for name, value in gateway_env.items():
        monkeypatch.setenv(name, value)
    assert GatewaySettings().demo is demo
    assert json.loads(gateway_env["SEEDX_GATEWAY_DEMO"]) is demo


async def test_the_favicon_is_served_without_a_key(client: httpx.AsyncClient) -> None:
    bare = {"Authorization": ""}
    index = await client.get("/", headers=bare)
    assert '<link rel="icon" type="image/svg+xml" href="playground/favicon.svg">' in index.text
    for path in ("/playground/favicon.svg", "/favicon.ico"):
        icon = await client.get(path, headers=bare)
        assert icon.status_code == 200, path
        assert icon.headers["content-type"] == "image/svg+xml"
        assert icon.text.startswith("<svg")
