"""SEED-X's image-token decoding rules as a vLLM logits processor (§5.5, §8 hazard 5).

The driver (``workers.llm``) never decodes *inside* an image block: it stops a request on
``<img>`` (or on a query token) and submits the forced rest of the block as prompt tokens of
the next request (one prefill pass). So at every position this processor sees, the reference's
"outside a block" branch applies:

* **Suppression**: the 64 query tokens and ``</img>`` get the logit ``suppress`` — ``0.0`` by
  default, exactly what the original ``AutoImageTokenGenerationProcessor`` writes (not ``-inf``:
  with all other logits negative the model could still pick one, §8.5; the driver then forces
  the rest of the block as the reference does). ``-inf`` is the strict variant, a deliberate
  deviation the worker can opt into.
* **Image required** (``force_after``, our extension, as ``engine.reference.generate``'s
  ``force_image_after``): a request that must return an image gets ``<img>`` once its output
  holds ``force_after`` tokens, and its EOS turns into ``<img>``; the queries and ``</img>``
  are masked until then (a block they open can never be the required image). For greedy
  requests this is the reference's rule exactly (the argmax EOS is replaced by ``<img>``). For
  sampled requests EOS's probability mass moves to ``<img>`` (``logaddexp`` of the two
  logits), the distributional form of "the sampled EOS becomes ``<img>``" (at temperature 1;
  it is applied before temperature scaling, like every non-argmax-invariant vLLM processor).

**No images** (``no_images``): every image-block token is masked, so the answer stays one vLLM
request. A grammar-constrained answer (JSON) needs it: the grammar's state lives in one request,
and a block the driver forced in a second request would begin that grammar again.

``force_ids`` (bench only, ``seedx bench llm``): forces the request's outputs to be exactly these
ids, one decode step each; this is the "forced decode" (65 steps per image block) that the
one-pass resubmission replaces, measured inside the same engine.

Per-request settings ride in ``SamplingParams.extra_args[RULES_KEY]`` (:func:`rules_args`);
requests without them are untouched. Registered with the engine argument
``logits_processors=[SeedXImageTokenRules]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from engine.vllm_plugin.ids import token_ids_for

RULES_KEY = "seedx_rules"
_GREEDY_EPS = 1e-5  # vLLM treats temperature below this as greedy


def rules_args(
    suppress: float = 0.0,
    force_after: int | None = None,
    force_ids: list[int] | None = None,
    no_images: bool = False,
) -> dict[str, Any]:
    """The ``extra_args`` entry that turns the rules on for one request."""
    if not (suppress == 0.0 or suppress == -math.inf):
        raise ValueError(f"suppress must be 0.0 (reference) or -inf (strict), got {suppress}")
    if force_after is not None and force_after < 0:
        raise ValueError(f"force_after must be >= 0, got {force_after}")
    spec = {"suppress": "-inf" if suppress == -math.inf else 0.0, "force_after": force_after}
    if force_ids:
        spec["force_ids"] = list(force_ids)
    if no_images:
        if force_after is not None:
            raise ValueError("no_images and force_after contradict each other")
        spec["no_images"] = True
    return {RULES_KEY: spec}


@dataclass
class _RowRules:
    suppress: float
    force_after: int | None
    greedy: bool
    output_ids: list[int]  # vLLM's live list of the request's generated ids
    force_ids: list[int] | None = None
    no_images: bool = False


def _row_rules(
    params: SamplingParams, _prompt: list[int] | None, output: list[int]
) -> _RowRules | None:
    spec = (params.extra_args or {}).get(RULES_KEY)
    if spec is None:
        return None
    suppress = -math.inf if spec.get("suppress") == "-inf" else 0.0
    greedy = params.temperature < _GREEDY_EPS
    return _RowRules(
        suppress,
        spec.get("force_after"),
        greedy,
        output,
        spec.get("force_ids"),
        bool(spec.get("no_images")),
    )


class SeedXImageTokenRules(LogitsProcessor):
    """Applies §5.5's suppression and the image-required rule to opted-in requests."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        ids = token_ids_for(str(vllm_config.model_config.model))
        self.boi, self.eos = ids.boi, ids.eos
        self.suppressed = torch.tensor([*ids.queries, ids.eoi], device=device)
        self.image_tokens = torch.tensor([*ids.image_sequence, ids.bop, ids.eop], device=device)
        self.rows: dict[int, _RowRules] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, _row_rules)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        for suppress in (0.0, -math.inf):
            rows = [i for i, r in self.rows.items() if r.suppress == suppress]
            if rows:
                index = torch.tensor(rows, device=logits.device)
                logits[index.unsqueeze(1), self.suppressed.unsqueeze(0)] = suppress
        masked = [i for i, r in self.rows.items() if r.no_images]
        if masked:
            index = torch.tensor(masked, device=logits.device)
            logits[index.unsqueeze(1), self.image_tokens.unsqueeze(0)] = -math.inf
        for i, rule in self.rows.items():
            if rule.force_ids is not None and len(rule.output_ids) < len(rule.force_ids):
                logits[i].fill_(-math.inf)
                logits[i, rule.force_ids[len(rule.output_ids)]] = 0.0
            elif rule.force_after is not None:
                self._force_image(logits[i], rule)
        return logits

    def _force_image(self, row: torch.Tensor, rule: _RowRules) -> None:
        """The image-required rule. Until the image opens, the 64 queries and ``</img>`` are
        masked outright (whatever ``suppress`` says): a block a query token opens yields no
        image and spends the tokens kept for the required one (issue 21, item 6: sampled
        choices of ``n=2`` came back without the image they required)."""
        assert rule.force_after is not None
        row[self.suppressed] = -math.inf
        if len(rule.output_ids) >= rule.force_after:
            row.fill_(-math.inf)
            row[self.boi] = 0.0
        elif rule.greedy:
            if int(torch.argmax(row)) == self.eos:
                row[self.boi] = row[self.eos] + 1.0  # finite, so logprobs stay defined
        else:
            row[self.boi] = torch.logaddexp(row[self.boi], row[self.eos])
            row[self.eos] = -math.inf
