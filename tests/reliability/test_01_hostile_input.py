"""Auth on every route, the SSRF matrix, media bombs, special tokens, schemathesis (items 6-10)."""

from __future__ import annotations

import asyncio
import re

import pytest

from seedx.chaos import hostile, probes
from seedx.chaos.stack import Stack

pytestmark = pytest.mark.slow


def test_no_route_answers_2xx_without_a_valid_key(stack: Stack) -> None:
    figures = asyncio.run(probes.auth(stack))
    print(figures)
    assert figures["routes"] >= 6, figures
    assert figures["unauthenticated_2xx"] == 0, figures["offenders"]


def test_ssrf_matrix_never_reaches_the_canary(stack: Stack) -> None:
    figures = asyncio.run(hostile.ssrf(stack))
    print(figures)
    assert figures["allow_listed_control_200"], "the fetch path itself is broken: proves nothing"
    assert figures["not_refused"] == [], figures
    assert figures["canary_connections"] == 0, figures


def test_media_bombs_and_malformed_bodies_are_400_408_or_413(stack: Stack) -> None:
    figures = asyncio.run(hostile.media(stack))
    print(figures)
    assert figures["not_4xx"] == [], figures["statuses"]
    assert figures["statuses"]["lying content-length (long)"] == 408, figures["statuses"]
    assert figures["gateway_alive"]
    # Peak RSS growth is bounded by what an accepted image may decode to (~3 bytes/pixel of
    # max_image_pixels would be 48 MiB here); bombs must not get anywhere near it.
    assert figures["max_peak_rss_growth_mib"] < 64, figures["peak_rss_growth_mib"]


def test_special_token_strings_never_become_special_ids(stack: Stack) -> None:
    figures = asyncio.run(probes.special_tokens(stack))
    print(figures)
    assert figures["token_strings"] >= 100, figures
    assert figures["statuses"] == {200: figures["requests"]}, figures
    assert figures["special_ids_from_user_text"] == 0, figures
    assert figures["prompt_token_mismatches"] == 0, figures
    assert figures["engine_errors"] == 0, figures
    assert figures["engine_restarts"] == 0, figures


def test_schemathesis_finds_no_server_error(stack: Stack) -> None:
    figures = probes.schemathesis_run(stack, 6, "examples,coverage,fuzzing,stateful", 240)
    print(figures)
    assert figures["server_errors"] == 0, figures["summary"]
    # Every generated case must pass its checks. Schemathesis's exit code also counts its own
    # runtime errors: on a loaded CI box its coverage phase once raised Hypothesis'
    # "inconsistent results" inside case *generation* (639 generated, 639 passed, 0 server
    # errors), which says nothing about the server, so the summary is what is asserted.
    generated = re.search(r"(\d+) generated, (\d+) passed", figures["summary"])
    assert generated is not None, figures["summary"]
    assert generated.group(1) == generated.group(2), figures["summary"]
    assert "failed" not in figures["summary"], figures["summary"]
