"""Issue 21, item 6: an image-required answer keeps the room for its image. A query token or
``</img>`` picked before the image opens would start a block that yields no image and spend the
tokens kept for the required one (sampled ``n=2`` choices came back without it), so the rule
masks them until the image opens, in the vLLM processor and in the reference alike."""

from __future__ import annotations

import math

import torch

from engine.vllm_plugin.rules import SeedXImageTokenRules, _RowRules

VOCAB, BOI, EOS = 40, 30, 2
QUERIES = list(range(31, 39))  # stand-ins for the 64 queries; </img> is 39
EOI = 39


def _rules() -> SeedXImageTokenRules:
    rules = SeedXImageTokenRules.__new__(SeedXImageTokenRules)
    rules.boi, rules.eos = BOI, EOS
    rules.suppressed = torch.tensor([*QUERIES, EOI])
    rules.image_tokens = torch.tensor([BOI, *QUERIES, EOI])
    rules.rows = {}
    return rules


def _row(winner: int) -> torch.Tensor:
    row = torch.full((VOCAB,), -5.0)
    row[winner] = 3.0
    return row


def test_a_query_token_cannot_open_a_block_while_the_image_is_pending() -> None:
    for greedy in (True, False):
        rules = _rules()
        rules.rows = {0: _RowRules(0.0, force_after=50, greedy=greedy, output_ids=[1, 2, 3])}
        logits = _row(QUERIES[0])[None].clone()
        rules.apply(logits)
        assert torch.all(logits[0, [*QUERIES, EOI]] == -math.inf)
        assert int(torch.argmax(logits[0])) not in (*QUERIES, EOI)


def test_without_a_required_image_the_reference_suppression_holds() -> None:
    rules = _rules()
    rules.rows = {0: _RowRules(0.0, force_after=None, greedy=True, output_ids=[])}
    logits = _row(5)[None].clone()
    rules.apply(logits)
    assert torch.all(logits[0, [*QUERIES, EOI]] == 0.0)  # §5.5: 0.0, not -inf


def test_eos_still_becomes_img_and_the_deadline_forces_it() -> None:
    rules = _rules()
    rules.rows = {0: _RowRules(0.0, force_after=3, greedy=True, output_ids=[7])}
    logits = _row(EOS)[None].clone()
    rules.apply(logits)
    assert int(torch.argmax(logits[0])) == BOI
    rules.rows[0].output_ids.extend([8, 9])
    logits = _row(5)[None].clone()
    rules.apply(logits)
    assert int(torch.argmax(logits[0])) == BOI
