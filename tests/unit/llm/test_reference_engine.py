"""``ReferenceLLMEngine`` refuses what the reference cannot serve exactly, before any work."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoint.convert import convert
from engine.checkpoint.tiny import make_tiny
from workers.llm.reference_engine import ReferenceLLMEngine
from workers.llm.types import LLMRequest, SamplingOptions


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ReferenceLLMEngine:
    scratch = tmp_path_factory.mktemp("reference-engine")
    make_tiny(scratch / "tiny")
    convert(scratch / "tiny", scratch / "serving", models=["seed-x-i"], dtype="float32",
            progress=False)  # fmt: skip
    return ReferenceLLMEngine.load(scratch / "serving", "seed-x-i", torch.float32, "cpu")


def _request(engine: ReferenceLLMEngine, **sampling: object) -> LLMRequest:
    ids = (engine.tokenizer.bos_id, *engine.tokenizer.encode_user_text("a cat"))
    return LLMRequest("r1", ids, sampling=SamplingOptions(**sampling), image_required=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sampling", "field"),
    [({"temperature": 0.7}, "temperature"), ({"n": 2}, "n"), ({"stop": ("x",)}, "stop"),
     ({"max_tokens": 10}, "max_tokens"), ({"max_tokens": 4000}, "max_tokens")],
)  # fmt: skip
def test_refuses_what_the_reference_cannot_serve(
    engine: ReferenceLLMEngine, sampling: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        engine.check(_request(engine, **sampling))


async def test_generates_an_image_embedding(engine: ReferenceLLMEngine) -> None:
    events = [e async for e in engine.generate(_request(engine, max_tokens=80))]
    kinds = [type(e).__name__ for e in events]
    assert kinds[-2:] == ["ChoiceFinished", "Usage"]
    images = [e for e in events if type(e).__name__ == "ImageEmbedding"]
    assert len(images) == 1
    assert images[0].embedding.shape[0] == 64
    assert events[-1].images == 1
    assert events[-1].completion_tokens == 80
