"""The images API against the fake backend, through the official openai client."""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest
from PIL import Image

from tests.unit.server.fakes import FakeBackend, png_bytes
from workers.protocol import ChatJob, ImageEditJob, ImageGenerateJob, ImageReconstructJob


def decode(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_generate_fans_out_one_llm_pass_to_n_images(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    result = await oai.images.generate(
        prompt="a red cube",
        n=2,
        size="64x128",
        extra_body={"steps": 4, "guidance_scale": 5.0, "seed": 100},
    )
    assert result.data is not None
    assert [decode(d.b64_json).size for d in result.data] == [(64, 128), (64, 128)]
    assert result.usage is not None
    assert result.usage.input_tokens == 7
    (llm,) = backend.jobs_of("chat")
    assert isinstance(llm, ChatJob)
    assert (llm.task, llm.allow_image_output, llm.sampling.n, llm.sampling.temperature) == (
        "generate",
        True,
        1,
        0.0,
    )
    assert llm.messages[0].content[0].text == "a red cube"  # type: ignore[union-attr]
    jobs = backend.jobs_of("image.generate")
    assert all(isinstance(j, ImageGenerateJob) for j in jobs)
    assert sorted((j.seed, j.steps, j.guidance_scale) for j in jobs) == [  # type: ignore[union-attr]
        (100, 4, 5.0),
        (101, 4, 5.0),
    ]


async def test_a_signed_url_past_its_expiry_is_gone(
    oai: openai.AsyncOpenAI,
    client: httpx.AsyncClient,
    backend: FakeBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import server.published

    backend.llm_images = 1
    result = await oai.images.generate(prompt="x", response_format="url")
    assert result.data is not None
    assert result.data[0].url is not None
    later = time.time() + 3601
    monkeypatch.setattr(server.published.time, "time", lambda: later)
    response = await client.get(result.data[0].url)
    assert response.status_code == 404
    assert "expired" in response.json()["error"]["message"]


async def test_generate_url_response_is_served_until_it_expires(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    result = await oai.images.generate(prompt="x", response_format="url")
    assert result.data is not None
    url = result.data[0].url
    assert url is not None
    # Issue 21, item 8: the signed URL is the capability, as OpenAI's are: no API key needed
    # (an <img> tag or another service can load it), cacheable for the lifetime it has left.
    async with httpx.AsyncClient(transport=client._transport, base_url=client.base_url) as bare:
        response = await bare.get(url)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (64, 64)
        cache = response.headers["cache-control"]
        assert cache.startswith("private, max-age=")
        max_age = int(cache.split("max-age=")[1].split(",")[0])
        assert 3500 <= max_age <= 3600, cache  # image_url_ttl_s (1 h) less the seconds gone
        forged = url.replace("/content", "").rsplit(".", 1)[0] + "." + "0" * 32 + "/content"
        assert (await bare.get(forged)).status_code == 404  # no key and no valid signature
        other = await bare.get("/v1/models")
        assert other.status_code == 401  # every other route still needs the key
    backend.blobs.data.clear()  # the TTL passed
    expired = await client.get(url)
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "image_id",
    [
        "0" * 32 + ".png." + "0" * 32,  # the old unexpiring form
        "0" * 32 + ".png.9999999999." + "0" * 32,  # forged signature
        "seedx:blob:abc",
        "..%2F..%2Fetc",
    ],
)
async def test_content_route_serves_only_signed_ids(
    client: httpx.AsyncClient, image_id: str
) -> None:
    response = await client.get(f"/v1/images/{image_id}/content")
    assert response.status_code == 404


async def test_generate_stream_sends_partial_and_completed_events(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    stream = await oai.images.generate(prompt="x", stream=True, partial_images=2)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [getattr(e, "partial_image_index", None) for e in events] == [0, 1, None]
    assert decode(events[-1].b64_json).size == (64, 64)
    assert events[-1].size == "64x64"


async def test_model_that_emits_no_image_is_a_502(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 0
    with pytest.raises(openai.APIStatusError) as info:
        await oai.images.generate(prompt="x")
    assert info.value.status_code == 502


async def test_edit_runs_seed_x_edit_then_the_conditioned_detokenizer(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    result = await oai.images.edit(
        image=("cat.png", png_bytes(48, 40), "image/png"),
        prompt="make it blue",
        n=1,
        size="64x64",
        extra_body={"image_guidance_scale": 2.0},
    )
    assert result.data is not None
    assert len(result.data) == 1
    (llm,) = backend.jobs_of("chat")
    assert isinstance(llm, ChatJob)
    assert (llm.model, llm.task) == ("seed-x-edit", "edit")
    source, _prompt = llm.messages[0].content
    assert source.type == "image"
    (edit,) = backend.jobs_of("image.edit")
    assert isinstance(edit, ImageEditJob)
    assert edit.model == "second_stage"
    assert edit.source == source.image  # type: ignore[union-attr]
    assert edit.image_guidance_scale == 2.0


async def test_edit_stream_uses_image_edit_events(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.llm_images = 1
    stream = await oai.images.edit(
        image=("cat.png", png_bytes(), "image/png"), prompt="x", stream=True, partial_images=1
    )
    types = [event.type async for event in stream]
    assert types == ["image_edit.partial_image", "image_edit.completed"]


async def test_edit_refuses_a_mask_and_several_images(client: httpx.AsyncClient) -> None:
    files = [("image", ("a.png", png_bytes())), ("mask", ("m.png", png_bytes()))]
    response = await client.post("/v1/images/edits", data={"prompt": "x"}, files=files)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "mask"
    files = [("image[]", ("a.png", png_bytes())), ("image[]", ("b.png", png_bytes()))]
    response = await client.post("/v1/images/edits", data={"prompt": "x"}, files=files)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"


async def test_edit_refuses_a_non_edit_model(client: httpx.AsyncClient) -> None:
    files = [("image", ("a.png", png_bytes()))]
    data = {"prompt": "x", "model": "seed-x-i"}
    response = await client.post("/v1/images/edits", data=data, files=files)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client's, not ours
async def test_variations_reconstruct_without_the_llm(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    result = await oai.images.create_variation(
        image=("cat.png", png_bytes(), "image/png"), n=3, extra_body={"seed": 7}
    )
    assert result.data is not None
    assert len(result.data) == 3
    assert backend.jobs_of("chat") == []
    jobs = backend.jobs_of("image.reconstruct")
    assert all(isinstance(j, ImageReconstructJob) and j.model == "first_stage" for j in jobs)
    assert sorted(j.seed for j in jobs) == [7, 8, 9]  # type: ignore[union-attr]


async def test_variation_of_a_non_image_is_400(client: httpx.AsyncClient) -> None:
    files = [("image", ("a.png", b"not an image"))]
    response = await client.post("/v1/images/variations", files=files)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "size": "12x12"}, "size"),
        ({"prompt": "x", "steps": 1000}, "steps"),
        ({"prompt": "x", "background": "transparent"}, "background"),
        ({"prompt": "x", "output_compression": 50}, "output_compression"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "model": "seed-x-edit"}, "model"),
    ],
)
async def test_generation_bounds(
    client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    response = await client.post("/v1/images/generations", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_full_diffusion_queue_is_429(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.loads[("diffusion", "first_stage")] = 63
    response = await client.post("/v1/images/generations", json={"prompt": "x", "n": 2})
    assert response.status_code == 429
    assert backend.jobs == []


@pytest.mark.parametrize(
    ("quality", "steps"), [("low", 1), ("medium", 2), ("auto", 2), ("high", 4), ("hd", 4)]
)
async def test_quality_picks_the_denoising_steps(
    oai: openai.AsyncOpenAI, backend: FakeBackend, quality: str, steps: int
) -> None:
    """Relative to the operator's default steps (2 in these tests): half, the default, twice."""
    backend.llm_images = 1
    await oai.images.generate(prompt="a red cube", quality=quality)  # type: ignore[arg-type]
    (job,) = backend.jobs_of("image.generate")
    assert job.steps == steps  # type: ignore[union-attr]


async def test_an_unknown_quality_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/images/generations", json={"prompt": "x", "quality": "ultra"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "quality"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["generations", "edits", "variations"])
async def test_n_images_are_n_jobs_with_their_own_ids(
    client: httpx.AsyncClient, backend: FakeBackend, endpoint: str, stream: bool
) -> None:
    """Issue 21, item 1: n=2 generations and edits submitted two diffusion jobs under one
    job_id (a 500 on the real reply reader); every endpoint now builds its images one way."""
    if endpoint == "variations" and stream:
        pytest.skip("variations have no stream")
    backend.llm_images = 1
    fields = {"n": "2", "size": "64x64"} | ({"stream": "true"} if stream else {})
    if endpoint == "generations":
        response = await client.post(
            "/v1/images/generations", json={"prompt": "a cube", **fields, "stream": stream}
        )
    else:
        data = fields | ({"prompt": "make it blue"} if endpoint == "edits" else {})
        response = await client.post(
            f"/v1/images/{endpoint}", data=data, files={"image": ("a.png", png_bytes())}
        )
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.count('.completed"') == 2, response.text
    else:
        assert len(response.json()["data"]) == 2
    kinds = {"generations": "image.generate", "edits": "image.edit"}
    jobs = backend.jobs_of(kinds.get(endpoint, "image.reconstruct"))
    assert len({job.job_id for job in jobs}) == len(jobs) == 2
