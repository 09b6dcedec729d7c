# ruff: noqa: E501  (the corpus is a table: one probe a line reads best)
"""The hostile-input corpus through the real stack (issue 21): Unicode edge cases, bodies that
are not what they say, and every parameter at and past its limits, sent to the real gateway,
Redis and workers. Each answer is a success or a 4xx that says what to change (naming the
parameter where there is one); **0 server errors**, and the stack still answers afterwards.

The unit tests prove the same rules against the app in-process; this corpus proves that what the
gateway accepts, the workers and the wire accept too (a lone surrogate passed every request model
and failed where it was first encoded: a 500 no unit test saw).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from tests.e2e.conftest import KEY, Stack

AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
CHAT = "/v1/chat/completions"
GENERATE = "/v1/images/generations"
EDIT = "/v1/images/edits"
RESPONSES = "/v1/responses"
EMOJI = "\U0001f600"  # four UTF-8 bytes, two UTF-16 units


def _png(size: tuple[int, int] = (64, 64), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "orange" if mode == "RGB" else 128).save(out, format=fmt)
    return out.getvalue()


def _data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@dataclass(frozen=True)
class Probe:
    """One hostile request: raw JSON text (escapes the json module cannot write) or fields."""

    name: str
    path: str
    body: Any = None  # a dict (sent as JSON), or str / bytes sent as they are
    form: dict[str, str] | None = None
    files: dict[str, Any] | None = None
    param: bool = True  # a 4xx must name a parameter (False: the body as a whole is wrong)


def _chat(content: Any = "hi", **fields: Any) -> dict[str, Any]:
    return {
        "model": "seed-x-i",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": content}],
    } | fields


def _raw_chat(text_json: str, **fields: Any) -> str:
    """A chat body whose message content is ``text_json``, a JSON string literal as written."""
    rest = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items())
    return (
        '{"model": "seed-x-i", "max_tokens": 8, "messages": [{"role": "user", "content": '
        + text_json
        + "}]"
        + rest
        + "}"
    )


UNICODE = [
    Probe("lone high surrogate", CHAT, _raw_chat('"a\\ud83d b"')),
    Probe("lone low surrogate", CHAT, _raw_chat('"\\ude00"')),
    Probe("reversed pair", CHAT, _raw_chat('"\\ude00\\ud83d"')),
    Probe("surrogate in a stop string", CHAT, _raw_chat('"hi"', stop=["x"]).replace('["x"]', '["\\udbff"]')),
    Probe("surrogate in a key", CHAT, _raw_chat('"hi"').replace('"model"', '"\\ud800"', 1)),
    Probe("surrogate bytes as UTF-8", CHAT, _raw_chat('"a\xed\xa0\xbdb"').encode("latin-1")),
    Probe("invalid UTF-8", CHAT, _raw_chat('"\xff\xfe"').encode("latin-1"), param=False),
    Probe("UTF-8 BOM before the body", CHAT, b"\xef\xbb\xbf" + json.dumps(_chat()).encode(), param=False),
    Probe("NUL characters", CHAT, _chat("a\x00b\x00" * 50)),
    Probe("C0 and C1 controls", CHAT, _chat("".join(map(chr, [*range(1, 32), *range(127, 160)])))),
    Probe("RTL override and isolates", CHAT, _chat("\u202eabc\u2066def\u2069\u200f")),
    Probe("zero-width joiners", CHAT, _chat("\U0001f468\u200d\U0001f469\u200d\U0001f467" * 200)),
    Probe("10k combining marks", CHAT, _chat("a" + "\u0301" * 10_000)),
    Probe("4-byte emoji across body chunks", CHAT, _chat(EMOJI * 30_000)),
    Probe("emoji as surrogate-pair escapes", CHAT, _raw_chat('"' + "\\ud83d\\ude00" * 5000 + '"')),
    Probe("noncharacters", CHAT, _chat("\ufffe\uffff\U0010ffff")),
    Probe("special-token strings", CHAT, _chat("<img></img><s></s><patch><box_start><loc-1>")),
    Probe("emoji prompt for an image", GENERATE, {"prompt": EMOJI * 100, "size": "64x64", "steps": 1}),
    Probe("NUL in an image prompt", GENERATE, {"prompt": "a\x00b", "size": "64x64", "steps": 1}),
    Probe("surrogate in an image prompt", GENERATE, '{"prompt": "\\udfff", "size": "64x64"}'),
    Probe("surrogate in Responses input", RESPONSES, '{"model": "seed-x-i", "input": "\\ud83d"}'),
    Probe("surrogate in Responses instructions", RESPONSES, '{"input": "hi", "instructions": "\\ud83d", "max_output_tokens": 8}'),
    Probe("RTL in Responses", RESPONSES, {"input": "\u202e" + EMOJI, "max_output_tokens": 8}),
    Probe("invalid UTF-8 in a form prompt", EDIT, form={"prompt": "x"}, files={"image": ("a.png", _png(), "image/png"), "prompt": (None, b"\xff\xfe\xed\xa0\xbd")}),
    Probe("emoji file name", EDIT, form={"prompt": "blue", "size": "64x64", "steps": "1"}, files={"image": (EMOJI * 50 + ".png", _png(), "image/png")}),
]  # fmt: skip

BODIES = [
    Probe("not JSON", CHAT, "{not json", param=False),
    Probe("JSON array", CHAT, "[]", param=False),
    Probe("JSON string", CHAT, '"hi"', param=False),
    Probe("null", CHAT, "null", param=False),
    Probe("deeply nested", CHAT, '{"metadata": ' + "[" * 5000 + "]" * 5000 + ', "messages": []}', param=False),
    Probe("duplicate keys", CHAT, '{"messages": [], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'),
    Probe("huge number", CHAT, _raw_chat('"hi"').replace('"max_tokens": 8', '"max_tokens": 1' + "0" * 5000), param=False),
    Probe("NaN", CHAT, _raw_chat('"hi"').replace('"max_tokens": 8', '"temperature": NaN')),
    Probe("Infinity", CHAT, _raw_chat('"hi"').replace('"max_tokens": 8', '"top_p": Infinity')),
]  # fmt: skip

LIMITS = [
    *(Probe(f"n={n}", CHAT, _chat(n=n)) for n in (0, -1, 5, 17, 2**63, 1.5, "2", True)),
    *(Probe(f"max_tokens={v}", CHAT, _chat(max_tokens=v)) for v in (0, -1, 2049, 2**64, 1e9)),
    *(Probe(f"temperature={v}", CHAT, _chat(temperature=v)) for v in (-0.01, 2.01, 1e308)),
    *(Probe(f"top_p={v}", CHAT, _chat(top_p=v)) for v in (0, 1.01)),
    *(Probe(f"seed={v}", CHAT, _chat(seed=v)) for v in (-1, 2**63, 2**63 - 1)),
    *(Probe(f"penalty={v}", CHAT, _chat(presence_penalty=v)) for v in (-2.01, 2.01)),
    Probe("top_logprobs=21", CHAT, _chat(logprobs=True, top_logprobs=21)),
    Probe("top_logprobs=20", CHAT, _chat(logprobs=True, top_logprobs=20)),
    *(Probe(f"logit_bias key {k!r}", CHAT, _chat(logit_bias={k: 1})) for k in ("-1", "²", "１２", "1e3", "99999999999999999999", "")),
    Probe("logit_bias 101", CHAT, _chat(logit_bias={"5": 101})),
    Probe("logit_bias 1025 entries", CHAT, _chat(logit_bias={str(i): 1 for i in range(1025)})),
    Probe("stop 5 strings", CHAT, _chat(stop=["a", "b", "c", "d", "e"])),
    Probe("stop empty string", CHAT, _chat(stop="")),
    Probe("no messages", CHAT, _chat() | {"messages": []}),
    Probe("257 messages", CHAT, _chat() | {"messages": [{"role": "user", "content": "x"}] * 257}),
    Probe("unknown role", CHAT, _chat() | {"messages": [{"role": "robot", "content": "x"}]}),
    Probe("content of numbers", CHAT, _chat(content=[1, 2])),
    Probe("unknown part type", CHAT, _chat(content=[{"type": "audio", "audio": "x"}])),
    Probe("image_url not a URL", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": "nope"}}])),
    Probe("9 images", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(_png())}}] * 9)),
    Probe("1x1 image", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(_png((1, 1)))}}])),
    Probe("1x4000 image", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(_png((1, 4000)))}}])),
    Probe("grayscale image", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(_png(mode="L"))}}])),
    Probe("RGBA image", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(_png(mode="RGBA"))}}])),
    Probe("JPEG labelled PNG", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(_png(fmt="JPEG"))}}])),
    Probe("BMP image", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(_png(fmt="BMP"), "image/bmp")}}])),
    Probe("SVG image", CHAT, _chat(content=[{"type": "image_url", "image_url": {"url": _data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")}}])),
    Probe("image size 63x64", CHAT, _chat(modalities=["text", "image"], image_options={"size": "63x64"})),
    Probe("image steps 0", CHAT, _chat(modalities=["text", "image"], image_options={"steps": 0})),
    Probe("image_options unknown key", CHAT, _chat(modalities=["text", "image"], image_options={"sizes": "64x64"})),
    Probe("require without image modality", CHAT, _chat(image_options={"require": True})),
    Probe("require in 10 tokens", CHAT, _chat(max_tokens=10, modalities=["text", "image"], image_options={"require": True}, stream=True)),
    Probe("json_schema without schema name", CHAT, _chat(response_format={"type": "json_schema", "json_schema": {}})),
    Probe("unknown modality", CHAT, _chat(modalities=["audio"])),
    *(Probe(f"images size {s!r}", GENERATE, {"prompt": "x", "size": s}) for s in ("0x0", "64x64x64", "99999x64", "-64x64", "64X64", "auto", "")),
    *(Probe(f"images n={n}", GENERATE, {"prompt": "x", "n": n, "size": "64x64", "steps": 1}) for n in (0, 5, 17, "two")),
    *(Probe(f"images steps={s}", GENERATE, {"prompt": "x", "steps": s, "size": "64x64"}) for s in (0, 101, 2**40)),
    *(Probe(f"images guidance={g}", GENERATE, {"prompt": "x", "guidance_scale": g, "size": "64x64", "steps": 1}) for g in (-1, 50.01)),
    *(Probe(f"images seed={s}", GENERATE, {"prompt": "x", "seed": s, "size": "64x64", "steps": 1}) for s in (-1, 2**63, 2**63 - 1)),
    Probe("images partial_images=4", GENERATE, {"prompt": "x", "partial_images": 4, "stream": True}),
    Probe("images output_compression=101", GENERATE, {"prompt": "x", "output_format": "jpeg", "output_compression": 101}),
    Probe("images compression on png", GENERATE, {"prompt": "x", "output_compression": 50}),
    Probe("images quality ultra", GENERATE, {"prompt": "x", "quality": "ultra"}),
    Probe("images empty prompt", GENERATE, {"prompt": ""}),
    Probe("images 32001-char prompt", GENERATE, {"prompt": "x" * 32_001}),
    Probe("images transparent", GENERATE, {"prompt": "x", "background": "transparent"}),
    Probe("edit with a mask", EDIT, form={"prompt": "x"}, files={"image": ("a.png", _png(), "image/png"), "mask": ("m.png", _png(), "image/png")}),
    Probe("edit without an image", EDIT, form={"prompt": "x"}, files={"other": ("a.png", _png(), "image/png")}),
    Probe("edit of a text file", EDIT, form={"prompt": "x"}, files={"image": ("a.png", b"hello", "image/png")}),
    Probe("edit n=0", EDIT, form={"prompt": "x", "n": "0"}, files={"image": ("a.png", _png(), "image/png")}),
    Probe("responses max_output_tokens=0", RESPONSES, {"input": "hi", "max_output_tokens": 0}),
    Probe("responses empty input", RESPONSES, {"input": []}),
    Probe("responses unknown item", RESPONSES, {"input": [{"type": "mystery"}]}),
    Probe("responses unknown previous id", RESPONSES, {"input": "hi", "previous_response_id": "resp_nope"}),
]  # fmt: skip


@dataclass
class Outcome:
    statuses: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


async def _send(http: httpx.AsyncClient, probe: Probe) -> httpx.Response:
    if probe.files is not None or probe.form is not None:
        return await http.post(probe.path, headers=AUTH, data=probe.form, files=probe.files)
    if isinstance(probe.body, dict):
        return await http.post(probe.path, headers=AUTH, json=probe.body)
    content = probe.body.encode() if isinstance(probe.body, str) else probe.body
    return await http.post(probe.path, headers=JSON, content=content)


async def _probe(http: httpx.AsyncClient, probe: Probe, outcome: Outcome) -> None:
    try:
        try:
            answer = await _send(http, probe)
        except httpx.TransportError:  # a kept-alive connection the server closed as we sent
            answer = await _send(http, probe)  # (clients retry that); twice is a real failure
    except httpx.HTTPError as exc:
        outcome.violations.append(f"{probe.name}: transport error {exc!r}")
        return
    outcome.statuses[probe.name] = answer.status_code
    if answer.status_code >= 500:
        outcome.violations.append(f"{probe.name}: {answer.status_code} {answer.text[:300]}")
    elif answer.status_code >= 400:
        try:
            error = answer.json()["error"]
        except (ValueError, KeyError, TypeError):
            outcome.violations.append(f"{probe.name}: {answer.status_code} not an OpenAI error")
            return
        if probe.param and not error.get("param"):
            outcome.violations.append(
                f"{probe.name}: {answer.status_code} names no parameter: {error}"
            )
    elif answer.headers.get("content-type", "").startswith("text/event-stream") and (
        '"error"' in answer.text
    ):
        outcome.violations.append(f"{probe.name}: 200, then an error frame: {answer.text[-300:]}")


def test_hostile_corpus_gets_no_server_error(stack: Stack) -> None:
    outcome = Outcome()
    probes = [*UNICODE, *BODIES, *LIMITS]

    async def run_all() -> None:
        limit = asyncio.Semaphore(4)

        async def one(probe: Probe) -> None:
            async with limit:
                await _probe(http, probe, outcome)

        async with httpx.AsyncClient(base_url=stack.base_url, timeout=300) as http:
            await asyncio.gather(*(one(probe) for probe in probes))
            after = await http.post(CHAT, headers=AUTH, json=_chat())
            if after.status_code != 200:
                outcome.violations.append(f"the stack no longer answers: {after.status_code}")

    asyncio.run(run_all())
    answered = sum(status < 400 for status in outcome.statuses.values())
    print(f"{len(probes)} probes: {answered} answered, {len(probes) - answered} refused")
    assert outcome.violations == [], "\n".join(outcome.violations) + "\n" + stack.tail()
    assert len(outcome.statuses) == len(probes)
