"""Logprobs, structured outputs (JSON) and logit_bias on the real vLLM engine (tiny seed-x-i).

What the OpenAI parameters turn into inside the worker (``workers.llm.choice``): vLLM's
``logprobs``, ``structured_outputs`` (xgrammar, compact JSON) and ``logit_bias``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from tests.integration.llm.helpers import request_id
from workers.llm.types import LLMRequest, SamplingOptions, TextDelta

pytestmark = pytest.mark.integration


def _prompt(engine: Any, text: str) -> tuple[int, ...]:
    from engine.prompts import Turn, build_prompt, chat_template

    built = build_prompt(engine.tokenizer, chat_template("seed-x-i", [Turn("user", text)]))
    return tuple(built.ids)


async def _answer(engine: Any, sampling: SamplingOptions, text: str = "Describe JSON.") -> Any:
    request = LLMRequest(request_id("sampling"), _prompt(engine, text), sampling=sampling)
    deltas, finished = [], []
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            deltas.append(event)
        elif type(event).__name__ == "ChoiceFinished":
            finished.append(event)
    return deltas, finished[0]


def test_greedy_logprobs_rank_the_sampled_token_first(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    sampling = SamplingOptions(temperature=0.0, max_tokens=12, logprobs=3)
    deltas, finished = engine_loop.run(_answer(llm_engine, sampling))
    entries = [e for d in deltas for e in d.logprobs or ()]
    suppressed = [*llm_engine.ids.queries, llm_engine.ids.eoi]
    shown = [i for i in finished.output_ids if llm_engine.tokenizer.id_to_token(i) != "</s>"]
    assert [e.token_id for e in entries] == shown
    for entry in entries:
        assert len(entry.top) == 3
        # Raw logprobs (vLLM's default): greedy picks the likeliest token the §5.5 rules leave
        # (query tokens and </img> are suppressed to 0.0 outside a block), so only those may
        # rank above it.
        above = {i for i, lp in entry.top if lp > entry.logprob}
        assert above <= set(suppressed)
        assert entry.logprob <= 0.0
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert sum(math.exp(lp) for _, lp in entry.top) <= 1.0 + 1e-5
    # The first logprob is the reference's raw log-softmax at the first generated position.
    prompt = torch.tensor([_prompt(llm_engine, "Describe JSON.")])
    with torch.no_grad():
        hidden = reference.llm.model(input_ids=prompt).last_hidden_state[0, -1]
        logits = reference.llm.lm_head(hidden).float()
    expected = torch.log_softmax(logits, -1)[entries[0].token_id].item()
    assert entries[0].logprob == pytest.approx(expected, abs=1e-4)


def test_json_object_is_enforced_by_the_grammar(llm_engine: Any, engine_loop: Any) -> None:
    """A bias that makes ``}`` win every step: the grammar still opens the object first, and ends
    the answer (EOS) once the object is closed. Without the grammar: ``}}}}...`` to the budget."""
    brace = llm_engine.tokenizer.encode_user_text("}")[-1]  # "<0x7D>" in the tiny vocabulary
    biased = SamplingOptions(temperature=0.0, max_tokens=40, logit_bias=((brace, 100.0),))
    deltas, finished = engine_loop.run(_answer(llm_engine, biased))
    assert set("".join(d.text for d in deltas)) == {"}"}
    json_mode = SamplingOptions(
        temperature=0.0, max_tokens=40, logit_bias=((brace, 100.0),), json_object=True
    )
    deltas, finished = engine_loop.run(_answer(llm_engine, json_mode))
    assert "".join(d.text for d in deltas) == "{}"
    assert finished.reason == "stop"


def test_json_schema_answer_matches_the_schema(llm_engine: Any, engine_loop: Any) -> None:
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 8},
            "x1": {"type": "integer", "minimum": 0, "maximum": 999},
            "ok": {"type": "boolean"},
        },
        "required": ["label", "x1", "ok"],
        "additionalProperties": False,
    }
    sampling = SamplingOptions(
        temperature=1.0, seed=3, max_tokens=200, json_schema=json.dumps(schema)
    )
    deltas, finished = engine_loop.run(_answer(llm_engine, sampling))
    text = "".join(d.text for d in deltas)
    assert finished.reason == "stop", text
    value = json.loads(text)
    assert set(value) == {"label", "x1", "ok"}
    assert isinstance(value["label"], str)
    assert len(value["label"]) <= 8
    assert isinstance(value["x1"], int)
    assert 0 <= value["x1"] <= 999
    assert isinstance(value["ok"], bool)


def test_logit_bias_steers_greedy_decoding(llm_engine: Any, engine_loop: Any) -> None:
    favourite = llm_engine.tokenizer.encode_user_text("zebra")[-1]
    sampling = SamplingOptions(temperature=0.0, max_tokens=4, logit_bias=((favourite, 100.0),))
    _, finished = engine_loop.run(_answer(llm_engine, sampling))
    assert list(finished.output_ids) == [favourite] * 4
