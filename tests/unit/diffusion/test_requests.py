"""Wire job -> checked request: parameters named on failure, embedding blobs verified."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.pipeline_inputs import EditJob, GenerateJob, ReconstructJob
from tests.unit.diffusion.support import (
    EMBED_DIM,
    edit_job,
    embedding,
    generate_job,
    memory_blobs,
    picture,
    png,
    reconstruct_job,
)
from workers.diffusion.errors import BadRequest
from workers.diffusion.requests import (
    BatchKey,
    RequestLimits,
    build_request,
    check_parameters,
    preview_steps,
)
from workers.errors import BlobCorrupt, BlobMissing
from workers.protocol import BlobRef

FIRST = RequestLimits("first_stage", EMBED_DIM, 64, True, 150, 2048 * 2048, 4.0, 4096 * 4096)
SECOND = RequestLimits("second_stage", EMBED_DIM, 64, True, 150, 2048 * 2048, 4.0, 4096 * 4096)
DUMMY = BlobRef(key="seedx:blob:x", dtype="float32", shape=(64, EMBED_DIM), checksum="crc32:0")


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"width": 72}, "width"),
        ({"height": 4096, "width": 4096}, "size"),
        ({"height": 64, "width": 512}, "size"),  # 8:1
        ({"steps": 151}, "steps"),
        ({"scheduler": "euler_a"}, "scheduler"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_bad_parameters_name_the_wire_field(changes: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_parameters(generate_job(DUMMY, **changes), FIRST)
    assert info.value.param == param
    assert info.value.code == "invalid_request"


def test_kind_must_match_the_detokenizer() -> None:
    with pytest.raises(BadRequest, match="second_stage") as info:
        check_parameters(edit_job(DUMMY, DUMMY), FIRST)
    assert info.value.param == "kind"
    with pytest.raises(BadRequest, match="first_stage"):
        check_parameters(generate_job(DUMMY), SECOND)
    no_vit = RequestLimits("first_stage", EMBED_DIM, 64, False, 150, 10**7, 4.0, 10**7)
    with pytest.raises(BadRequest, match="ViT"):
        check_parameters(reconstruct_job(DUMMY), no_vit)


def test_options_seed_and_scheduler_alias() -> None:
    options, seed = check_parameters(
        generate_job(DUMMY, width=128, steps=3, seed=7, scheduler="dpmsolver_pp"), FIRST
    )
    assert (options.height, options.width, options.num_inference_steps) == (64, 128, 3)
    assert options.scheduler == "dpmsolver++"
    assert seed == 7
    _, random_seed = check_parameters(generate_job(DUMMY), FIRST)
    assert 0 <= random_seed < 2**63


def test_preview_steps_spread_evenly_and_skip_the_last() -> None:
    assert preview_steps(50, 3) == (11, 24, 36)
    assert preview_steps(50, 1) == (24,)
    assert preview_steps(4, 3) == (0, 1, 2)
    assert preview_steps(2, 3) == (0,)  # too few steps: fewer previews
    assert preview_steps(1, 2) == ()
    assert preview_steps(50, 0) == ()


async def test_generate_request_reads_the_verified_embedding() -> None:
    blobs = memory_blobs()
    array = embedding(1).astype(np.float16)
    ref = await blobs.put_tensor(array)
    request = await build_request(generate_job(ref, seed=3, partial_images=2), blobs, FIRST)
    assert isinstance(request.engine_job, GenerateJob)
    assert request.engine_job.image_embeds.shape == (1, 64, EMBED_DIM)
    np.testing.assert_array_equal(request.engine_job.image_embeds[0].numpy(), array)
    assert request.seed == request.engine_job.seed == 3
    assert request.key == BatchKey(64, 64, 2, "euler")
    assert request.preview_steps == (0,)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (embedding(1).astype(np.float64), "float16 or float32"),
        (embedding(1, tokens=32), r"shape \[64, 128\]"),
        (np.full((64, EMBED_DIM), np.nan, dtype=np.float32), "NaN"),
    ],
)
async def test_bad_embeddings_are_refused(array: np.ndarray, match: str) -> None:
    blobs = memory_blobs()
    ref = await blobs.put_tensor(array)
    with pytest.raises(BadRequest, match=match) as info:
        await build_request(generate_job(ref), blobs, FIRST)
    assert info.value.param == "embedding"


async def test_embedding_checksum_and_presence_are_verified() -> None:
    blobs = memory_blobs()
    ref = await blobs.put_tensor(embedding(2))
    tampered = bytearray(await blobs.get(ref))
    tampered[0] ^= 0xFF
    await blobs._redis.set(ref.key, bytes(tampered))
    with pytest.raises(BlobCorrupt, match="checksum") as corrupt:
        await build_request(generate_job(ref), blobs, FIRST)
    assert corrupt.value.param == "embedding"
    unverifiable = ref.model_copy(update={"checksum": None})
    with pytest.raises(BadRequest, match="checksum"):
        await build_request(generate_job(unverifiable), blobs, FIRST)
    gone = ref.model_copy(update={"key": "seedx:blob:gone"})
    with pytest.raises(BlobMissing):
        await build_request(generate_job(gone), blobs, FIRST)


async def test_edit_and_reconstruct_read_their_source() -> None:
    blobs = memory_blobs()
    emb = await blobs.put_tensor(embedding(3))
    src = await blobs.put(png(picture(4)))
    edit = await build_request(edit_job(emb, src, image_guidance_scale=2.0), blobs, SECOND)
    assert isinstance(edit.engine_job, EditJob)
    assert edit.engine_job.source.size == (96, 80)
    assert edit.engine_job.image_guidance_scale == 2.0
    first = await build_request(reconstruct_job(src), blobs, FIRST)
    assert isinstance(first.engine_job, ReconstructJob)
    assert first.engine_job.condition is None
    second = await build_request(reconstruct_job(src, model="second_stage"), blobs, SECOND)
    assert isinstance(second.engine_job, ReconstructJob)
    assert second.engine_job.condition is second.engine_job.image  # its own condition


async def test_undecodable_or_huge_source_is_refused() -> None:
    blobs = memory_blobs()
    junk = await blobs.put(b"not an image")
    with pytest.raises(BadRequest, match="decodable") as info:
        await build_request(reconstruct_job(junk), blobs, FIRST)
    assert info.value.param == "source"
    big = await blobs.put(png(picture(5, size=(200, 200))))
    tight = RequestLimits("first_stage", EMBED_DIM, 64, True, 150, 10**7, 4.0, 100 * 100)
    with pytest.raises(BadRequest, match="more than 10000 pixels"):
        await build_request(reconstruct_job(big), blobs, tight)
