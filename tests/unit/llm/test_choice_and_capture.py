"""The answer loop, row store and text rendering without an engine (fakes for vLLM)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.tokenizer import SeedXTokenizer
from engine.vllm_plugin.capture import QueryRowStore, pack_tensor, unpack_tensor
from engine.vllm_plugin.ids import SeedXTokenIds
from workers.llm.choice import ChoiceRun, ChoiceSettings
from workers.llm.text import AnswerText
from workers.llm.types import (
    ChoiceFinished,
    ImageEmbedding,
    LLMRequest,
    SamplingOptions,
    TextDelta,
    TokenLogprob,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> SeedXTokenizer:
    from engine.checkpoint.tiny import make_tiny

    root = make_tiny(tmp_path_factory.mktemp("tok") / "t", seed=0)
    return SeedXTokenizer(Path(root) / "cvlm_llama2_tokenizer_100img_and_224loc_addpatch")


class ScriptedRunner:
    """Each segment emits the next scripted ids; records what was asked."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = script
        self.prompts: list[list[int]] = []
        self.keys: list[str] = []

    async def stream(self, request_id: str, ids: list[int], params: Any) -> AsyncIterator[Any]:
        self.prompts.append(list(ids))
        out = self.script.pop(0)[: params.max_tokens]
        for i, token in enumerate(out):
            last = i == len(out) - 1
            reason = None
            if last:
                reason = "stop" if token in params.stop_token_ids else "length"
            logprobs = None
            if params.logprobs is not None:  # the sampled token, then one runner-up
                logprobs = [TokenLogprob(token, -0.5, ((token, -0.5), (token + 1, -1.0)))]
            yield [token], reason, logprobs

    async def take_image(self, key: str, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys.append(key)
        return torch.zeros(64, 8), torch.full((64, 4), float(len(self.keys)))


async def _run(
    tokenizer: SeedXTokenizer,
    script: list[list[int]],
    max_tokens: int,
    logprobs: int | None = None,
    stop: tuple[str, ...] = (),
) -> Any:
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    text = tokenizer.encode_user_text("hello")
    sampling = SamplingOptions(max_tokens=max_tokens, logprobs=logprobs, stop=stop)
    request = LLMRequest("r", (ids.bos, *text), sampling=sampling)
    runner = ScriptedRunner(script)
    answer = AnswerText(tokenizer, stop)
    run = ChoiceRun(request, 0, ids, answer, runner, ChoiceSettings(0.0, ""), lambda: False)
    return [e async for e in run.events()], runner, ids


async def test_two_images_in_one_answer(tokenizer: SeedXTokenizer) -> None:
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    word = tokenizer.encode_user_text("cat")
    script = [[*word, ids.boi], [*word, ids.boi], [*word, ids.eos]]
    events, runner, _ = await _run(tokenizer, script, 300)
    images = [e for e in events if isinstance(e, ImageEmbedding)]
    finished = events[-1]
    assert isinstance(finished, ChoiceFinished)
    assert finished.reason == "stop"
    assert [i.position for i in images] == [len(word), 2 * len(word) + 66]
    assert len(set(runner.keys)) == 2
    # the second segment's prompt ends with the forced block (one prefill pass)
    assert runner.prompts[1][-65:] == list(ids.image_sequence[1:])
    assert finished.output_ids.count(ids.eoi) == 2


async def test_logprobs_cover_the_rendered_sampled_tokens_in_order(
    tokenizer: SeedXTokenizer,
) -> None:
    """Each sampled token that renders gets one entry, sent with the text it produced; the
    sampled <img>, the forced block and EOS are not content and get none."""
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    word, more = tokenizer.encode_user_text("cat"), tokenizer.encode_user_text("sat down")
    script = [[*word, ids.boi], [*more, ids.eos]]
    events, _, _ = await _run(tokenizer, script, 300, logprobs=1)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    entries = [entry for d in deltas for entry in d.logprobs or ()]
    assert [e.token_id for e in entries] == [*word, *more]
    assert all(d.logprobs for d in deltas if d.text)
    assert entries[0].top == ((word[0], -0.5), (word[0] + 1, -1.0))  # as the runner gave them


def test_vllm_logprobs_become_entries_best_first() -> None:
    """vLLM returns the top k and the sampled token (rank may exceed k); entries keep the sampled
    token's logprob and exactly the k likeliest, by rank."""
    from types import SimpleNamespace

    from workers.llm.engine import _logprobs

    def lp(value: float, rank: int) -> Any:
        return SimpleNamespace(logprob=value, rank=rank)

    out = SimpleNamespace(
        token_ids=[7, 9],
        logprobs=[
            {3: lp(-0.1, 1), 5: lp(-2.0, 2), 7: lp(-4.0, 6)},  # 7 sampled, not in the top 2
            {9: lp(-0.2, 1), 4: lp(-1.9, 2)},
        ],
    )
    entries = _logprobs(out, 2)
    assert entries == [
        TokenLogprob(7, -4.0, ((3, -0.1), (5, -2.0))),
        TokenLogprob(9, -0.2, ((9, -0.2), (4, -1.9))),
    ]
    assert _logprobs(out, None) is None
    assert _logprobs(out, 0)[0].top == ()


async def test_logprobs_stop_with_the_stop_string(tokenizer: SeedXTokenizer) -> None:
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    words = [tokenizer.encode_user_text(w) for w in ("one", "two", "three", "four")]
    script = [[*words[0], *words[1], *words[2], *words[3], ids.eos]]
    events, _, _ = await _run(tokenizer, script, 300, logprobs=0, stop=(" three",))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == "one two"
    entries = [entry.token_id for d in deltas for entry in d.logprobs or ()]
    assert entries == [*words[0], *words[1], *words[2]]  # up to the token that completed it


async def test_held_text_is_sent_when_the_budget_ends_in_an_image_block(
    tokenizer: SeedXTokenizer,
) -> None:
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    word = tokenizer.encode_user_text("cat")
    events, _, _ = await _run(tokenizer, [[*word, ids.boi]], len(word) + 10, stop=("zebra",))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "cat"
    assert events[-1].reason == "length"


async def test_block_cut_by_budget_gives_no_image(tokenizer: SeedXTokenizer) -> None:
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    events, runner, _ = await _run(tokenizer, [[ids.boi]], 30)
    assert not [e for e in events if isinstance(e, ImageEmbedding)]
    assert events[-1].reason == "length"
    assert len(events[-1].output_ids) == 30
    assert runner.keys == []


async def test_sampled_query_token_forces_rest_without_image(tokenizer: SeedXTokenizer) -> None:
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    script = [[ids.queries[60]], [ids.eos]]
    events, runner, _ = await _run(tokenizer, script, 100)
    assert not [e for e in events if isinstance(e, ImageEmbedding)]
    assert runner.prompts[1][-4:] == [*ids.queries[61:], ids.eoi]


def test_row_store_fills_across_chunks_and_evicts() -> None:
    store = QueryRowStore(max_entries=2)
    rows = torch.arange(100 * 3, dtype=torch.float32).reshape(100, 3)
    store.put("a", start=10, first_pos=0, rows=rows[:40])  # positions 0..39
    assert store.get("a") is None
    store.put("a", start=10, first_pos=40, rows=rows[40:80])
    assert torch.equal(store.get("a"), rows[10:74])
    store.put("b", 0, 0, rows[:64])
    store.put("c", 0, 0, rows[:64])
    assert store.get("a") is None  # least recently used, evicted
    assert unpack_tensor(pack_tensor(rows)).equal(rows)


def test_answer_text_keeps_box_markup_and_spaces(tokenizer: SeedXTokenizer) -> None:
    ids = SeedXTokenIds.from_tokenizer(tokenizer)
    text = AnswerText(tokenizer, box_image_size=(224, 448))
    box = [
        tokenizer.box_start_id,
        *(tokenizer.loc_ids[v] for v in (112, 112, 20, 40)),
        tokenizer.box_end_id,
    ]
    seq = [*tokenizer.encode_user_text("a car"), *box, *tokenizer.encode_user_text("is red")]
    out, boxes = "", []
    for token in [*seq, ids.boi, *ids.queries, ids.eoi]:
        new, found = text.feed([token])
        out += new
        boxes += found
    out += text.finish()
    assert out == "a car<box_start><loc-112><loc-112><loc-20><loc-40><box_end> is red"
    assert len(boxes) == 1
    assert boxes[0].pixels.x1 == 102


def test_answer_text_stop_string(tokenizer: SeedXTokenizer) -> None:
    text = AnswerText(tokenizer, stop=("red",))
    out = ""
    for token in tokenizer.encode_user_text("a car is red and fast"):
        new, _ = text.feed([token])
        out += new
        if text.stopped:
            break
    assert text.stopped
    assert out + text.finish() == "a car is "


def test_token_strings_are_openais(tokenizer: SeedXTokenizer) -> None:
    """A piece's text with ``▁`` as a space; a byte-fallback piece as ``bytes:\\xNN`` with its one
    byte; an added token as itself; minus infinity as -9999.0 on the wire."""
    from workers.llm.handler import _wire_logprobs
    from workers.llm.text import TokenStrings

    strings = TokenStrings(tokenizer)
    word = tokenizer.encode_user_text("a")[-1]  # "▁a"
    brace = tokenizer.encode_user_text("}")[-1]  # "<0x7D>" in the tiny vocabulary
    assert strings(word) == (" a", (32, 97))
    assert strings(brace) == ("bytes:\\x7d", (0x7D,))
    assert strings(tokenizer.box_start_id) == ("<box_start>", tuple(b"<box_start>"))
    (entry,) = _wire_logprobs(
        (TokenLogprob(word, -0.5, ((word, -0.5), (brace, -math.inf))),), strings
    )
    assert (entry.token, entry.logprob, entry.bytes) == (" a", -0.5, (32, 97))
    assert [(t.token, t.logprob) for t in entry.top_logprobs] == [
        (" a", -0.5),
        ("bytes:\\x7d", -9999.0),
    ]
