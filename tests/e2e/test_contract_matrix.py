"""The contract matrix (issue 21): every endpoint x every model ``/v1/models`` lists x ``n`` x
``stream`` x ``response_format``, through the real stack (gateway, Redis, vLLM worker,
diffusion worker on the tiny checkpoint).

Each request must end one of two ways: a correct answer (``n`` results, decodable images of the
requested size, signed URLs that load without the API key, valid SSE that ends as the protocol
says, every chat choice holding the image it required), or a 4xx JSON error naming the
parameter, before the first byte of a stream. A model that ``/v1/models`` says does not serve an
endpoint must get 400 with ``param="model"``; one that says it does must answer. Never a 5xx.

The cases are generated, not hand-picked, so a defect on a combination nobody thought of (the
``n=2`` images 500 of issue 21) fails here. Small sizes and 2 steps keep it quick; the requests
of one endpoint run a few at a time, as users' would.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from openai.types import ImagesResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response
from PIL import Image

from tests.e2e.conftest import KEY, Stack

SIZE = 64
CONCURRENCY = 4
RETRY_STATUSES = (429, 503)  # admitted later: the matrix is about answers, not capacity
AUTH = {"Authorization": f"Bearer {KEY}"}


def _png(color: str = "orange") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), color).save(out, format="PNG")
    return out.getvalue()


PHOTO = "data:image/png;base64," + base64.b64encode(_png()).decode()


@dataclass(frozen=True)
class Case:
    endpoint: str
    model: str
    n: int = 1
    stream: bool = False
    response_format: str | None = None  # images: b64_json | url; chat: image_options'
    images_out: bool = False  # chat / Responses: an answer that must hold an image

    def __str__(self) -> str:
        parts = [self.endpoint.removeprefix("/v1/"), self.model, f"n={self.n}"]
        parts += ["stream"] * self.stream + [self.response_format or ""] * bool(
            self.response_format
        )
        return " ".join(parts + ["images_out"] * self.images_out)


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    answered: int = 0
    refused: int = 0

    def add(self, case: Case, problem: str) -> None:
        self.violations.append(f"{case}: {problem}")


def _cases(models: dict[str, list[str]], endpoint: str) -> Iterator[Case]:
    ns = (1, 2) if endpoint != "/v1/responses" else (1,)
    streams = (False, True) if endpoint != "/v1/images/variations" else (False,)
    for model, n, stream in itertools.product(models, ns, streams):
        if endpoint.startswith("/v1/images/"):
            for response_format in ("b64_json", "url"):
                yield Case(endpoint, model, n, stream, response_format)
        elif endpoint == "/v1/chat/completions":
            yield Case(endpoint, model, n, stream)
            for response_format in ("b64_json", "url"):
                yield Case(endpoint, model, n, stream, response_format, images_out=True)
        else:
            yield Case(endpoint, model, n, stream)
            yield Case(endpoint, model, n, stream, images_out=True)


def _request(case: Case) -> dict[str, Any]:
    """The httpx keyword arguments of one case."""
    if case.endpoint == "/v1/images/generations":
        body = {"model": case.model, "prompt": "a red cube", "n": case.n, "size": f"{SIZE}x{SIZE}"}
        body |= {"response_format": case.response_format, "steps": 2, "stream": case.stream}
        return {"json": body}
    if case.endpoint in ("/v1/images/edits", "/v1/images/variations"):
        data = {"model": case.model, "n": str(case.n), "size": f"{SIZE}x{SIZE}", "steps": "2"}
        data["response_format"] = case.response_format or "b64_json"
        if case.endpoint.endswith("edits"):
            data |= {"prompt": "make it blue", "stream": str(case.stream).lower()}
        return {"data": data, "files": {"image": ("photo.png", _png(), "image/png")}}
    content = [{"type": "text", "text": "Draw a cat."}]
    if case.endpoint == "/v1/chat/completions":
        body = {"model": case.model, "n": case.n, "stream": case.stream, "max_tokens": 70}
        if case.images_out:
            content.append({"type": "image_url", "image_url": {"url": PHOTO}})  # edit models
            body["modalities"] = ["text", "image"]
            body["image_options"] = {
                "size": f"{SIZE}x{SIZE}",
                "steps": 2,
                "require": True,
                "response_format": case.response_format,
            }
        return {"json": body | {"messages": [{"role": "user", "content": content}]}}
    items: list[dict[str, Any]] = [{"type": "input_text", "text": "Draw a cat."}]
    body = {"model": case.model, "stream": case.stream, "max_output_tokens": 70}
    if case.images_out:
        items.append({"type": "input_image", "image_url": PHOTO})
        body["tools"] = [{"type": "image_generation", "size": f"{SIZE}x{SIZE}"}]
        body["tool_choice"] = "required"
    return {"json": body | {"input": [{"role": "user", "content": items}]}}


def _sse(text: str) -> list[Any]:
    """The ``data:`` payloads of an event stream, JSON-decoded (``[DONE]`` kept as a str)."""
    payloads: list[Any] = []
    for frame in text.split("\n\n"):
        data = [line[6:] for line in frame.split("\n") if line.startswith("data: ")]
        if data:
            joined = "\n".join(data)
            payloads.append(joined if joined == "[DONE]" else json.loads(joined))
    return payloads


def _image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


async def _check_url_or_b64(http: httpx.AsyncClient, url: str) -> str | None:
    """None when the image (a data: URL or a signed URL, loaded with no key) is right."""
    if url.startswith("data:"):
        data = base64.b64decode(url.split(",", 1)[1])
    else:
        loaded = await http.get(url)  # the signed URL is the capability: no Authorization
        if loaded.status_code != 200:
            return f"image URL answered {loaded.status_code} without the key"
        data = loaded.content
    size = _image_size(data)
    return None if size == (SIZE, SIZE) else f"image is {size}, asked {SIZE}x{SIZE}"


async def _check_images(http: httpx.AsyncClient, case: Case, answer: httpx.Response) -> list[str]:
    if case.stream:
        events = _sse(answer.text)
        if not events or events[-1] != "[DONE]":
            return ["the stream does not end with [DONE]"]
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        if errors:
            return [f"error frame {errors[0]}"]
        done = [e for e in events if isinstance(e, dict) and e["type"].endswith(".completed")]
        if sorted(e["image_index"] for e in done) != list(range(case.n)):
            return [f"{len(done)} completed events for n={case.n}"]
        problems = [await _check_url_or_b64(http, "data:," + e["b64_json"]) for e in done]
        return [p for p in problems if p]
    result = ImagesResponse.model_validate(answer.json())
    if result.data is None or len(result.data) != case.n:
        return [f"{len(result.data or [])} images for n={case.n}"]
    problems = []
    for item in result.data:
        url = item.url if case.response_format == "url" else "data:," + (item.b64_json or "")
        problems.append(await _check_url_or_b64(http, url or ""))
    if case.endpoint.endswith("edits"):
        usage = result.usage
        if usage is None or usage.input_tokens_details.image_tokens <= 0:
            problems.append(f"an edit's usage counts no image tokens: {usage}")
    return [p for p in problems if p]


def _chat_images(case: Case, answer: httpx.Response) -> tuple[dict[int, list[str]], set[int]]:
    """Each choice's image URLs and the choices that finished; ValueError for a bad stream."""
    images: dict[int, list[str]] = {k: [] for k in range(case.n)}
    finished: set[int] = set()
    if not case.stream:
        body = answer.json()
        for choice in body["choices"]:
            content = choice["message"]["content"]
            if isinstance(content, list):  # text and image_url parts: SEED-X's image answers,
                parts, text = content, "".join(p.get("text", "") for p in content)
                choice["message"]["content"] = text  # the SDK's type has str: check the rest
                images[choice["index"]] += [
                    p["image_url"]["url"] for p in parts if "image_url" in p
                ]
        for choice in ChatCompletion.model_validate(body).choices:
            finished.add(choice.index)
        return images, finished
    events = _sse(answer.text)
    if not events or events[-1] != "[DONE]":
        raise ValueError("the stream does not end with [DONE]")
    for event in events[:-1]:
        if "error" in event:
            raise ValueError(f"error frame {event}")
        for choice in ChatCompletionChunk.model_validate(event).choices:
            extra = choice.delta.model_extra or {}
            images[choice.index] += [p["image_url"]["url"] for p in extra.get("images", [])]
            if choice.finish_reason is not None:
                finished.add(choice.index)
    return images, finished


async def _check_chat(http: httpx.AsyncClient, case: Case, answer: httpx.Response) -> list[str]:
    try:
        images, finished = _chat_images(case, answer)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    if finished != set(range(case.n)):
        problems.append(f"choices {sorted(finished)} finished, n={case.n}")
    for index, urls in images.items():
        if case.images_out and not urls:
            problems.append(f"choice {index} has no image although it required one")
        for url in urls:
            problems.append(await _check_url_or_b64(http, url))
    return [p for p in problems if p]


def _check_responses(case: Case, answer: httpx.Response) -> list[str]:
    if case.stream:
        events = _sse(answer.text)
        kinds = [e.get("type") for e in events if isinstance(e, dict)]
        if not kinds or kinds[-1] not in ("response.completed", "response.incomplete"):
            return [f"the stream ends with {kinds[-1:]}"]
        body = events[-1]["response"]
    else:
        body = answer.json()
    response = Response.model_validate(body)
    calls = [item for item in response.output if item.type == "image_generation_call"]
    if case.images_out and not (calls and all(call.result for call in calls)):
        return ["no image although the tool was required"]
    return []


async def _post(http: httpx.AsyncClient, case: Case) -> httpx.Response:
    """The answer, once admitted (429 / 503 are retried after their Retry-After)."""
    for _ in range(60):
        try:
            answer = await http.post(case.endpoint, headers=AUTH, **_request(case))
        except httpx.TransportError:  # a kept-alive connection the server closed as we sent
            answer = await http.post(case.endpoint, headers=AUTH, **_request(case))
        if answer.status_code not in RETRY_STATUSES:
            break
        await asyncio.sleep(float(answer.headers.get("Retry-After", "1")))
    return answer


def _refusal_problem(answer: httpx.Response, serves: bool) -> str | None:
    """What is wrong with a 4xx: it must be JSON, name a parameter, and be 400 ``model``
    exactly when the model does not serve the endpoint."""
    status = answer.status_code
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"{status} not as a JSON error (after the first byte?)"
    error = answer.json()["error"]
    if not error.get("param"):
        return f"{status} names no parameter: {error}"
    if serves:
        return f"{status} although /v1/models says it serves this: {error}"
    if (status, error["param"]) != (400, "model"):
        return f"a model it does not serve: {status} {error}, want 400 naming model"
    return None


async def _run(
    http: httpx.AsyncClient, case: Case, serves: bool, findings: Findings, limit: asyncio.Semaphore
) -> None:
    async with limit:
        try:
            answer = await _post(http, case)
        except httpx.HTTPError as exc:
            findings.add(case, f"transport error {type(exc).__name__}: {exc}")
            return
    if answer.status_code >= 500:
        problems = [f"{answer.status_code} {answer.text[:300]}"]
    elif answer.status_code >= 400:
        findings.refused += 1
        problems = [_refusal_problem(answer, serves) or ""]
    else:
        findings.answered += 1
        problems = [] if serves else ["answered although /v1/models says it does not serve it"]
        if case.endpoint.startswith("/v1/images/"):
            problems += await _check_images(http, case, answer)
        elif case.endpoint == "/v1/chat/completions":
            problems += await _check_chat(http, case, answer)
        else:
            problems += _check_responses(case, answer)
    for problem in problems:
        if problem:
            findings.add(case, problem)


def _matrix(stack: Stack, endpoint: str) -> Findings:
    listed = httpx.get(f"{stack.base_url}/v1/models", headers=AUTH, timeout=30).json()["data"]
    models = {m["id"]: m.get("endpoints", []) for m in listed}
    assert {"seed-x-i", "seed-x-edit", "first_stage", "second_stage"} <= set(models)
    findings = Findings()

    async def run_all() -> None:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=300) as http:
            await asyncio.gather(
                *(
                    _run(http, case, endpoint in models[case.model], findings, limit)
                    for case in _cases(models, endpoint)
                )
            )

    asyncio.run(run_all())
    return findings


@pytest.mark.parametrize(
    "endpoint",
    [
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/chat/completions",
        "/v1/responses",
    ],
)
def test_contract_matrix(stack: Stack, endpoint: str) -> None:
    findings = _matrix(stack, endpoint)
    print(f"{endpoint}: {findings.answered} answered, {findings.refused} refused")
    assert findings.violations == [], "\n".join(findings.violations) + "\n" + stack.tail()
    assert findings.answered > 0, "no model served this endpoint: the matrix proves nothing"
