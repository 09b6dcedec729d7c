"""Plain-PyTorch reference of the SEED-X LLM stage (§5.1, §5.2 steps 1-4, §5.5), batch 1.

This is the parity oracle for the vLLM worker and the engine behind ``seedx run``. It follows
the original ``ContinuousLVLM.generate`` with one deliberate change: after ``<img>`` the 64
image-query rows and ``</img>`` are computed in **one forward pass** instead of 65 forced decode
steps. Their inputs are known in advance and attention is causal, so the hidden states are the
same (``query_rows="forced"`` keeps the step-by-step path for the equality test and the bench).
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from engine.agent import PictureEncoder
from engine.loading import LlmFolder
from engine.prompts import query_positions

logger = logging.getLogger(__name__)

QueryRowMode = Literal["one_pass", "forced"]


@dataclass
class GeneratedImage:
    """One ``<img>...</img>`` block the model produced."""

    query_hidden: torch.Tensor  # [64, H] final-norm LLM states at the query positions
    embedding: torch.Tensor  # [64, D] output-resampler result, what the de-tokenizer consumes
    position: int  # index of its <img> among the generated tokens; -1 when the prompt opened it


@dataclass
class Generation:
    prompt_ids: list[int]
    output_ids: list[int]  # every generated id, forced image tokens included
    images: list[GeneratedImage] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] = "length"


class SeedXReference:
    """Greedy SEED-X generation with the image-token rules of §5.5."""

    def __init__(
        self,
        llm: Any,
        encoder: PictureEncoder,
        tokenizer: Any,
        folder: LlmFolder,
        suppress_value: float = 0.0,
    ) -> None:
        self.llm = llm
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.folder = folder
        # §8.5: the original sets the logits of the query tokens and </img> to 0.0 outside an
        # image, not -inf. Kept for parity; pass float("-inf") for the strict rule.
        self.suppress_value = suppress_value
        self.image_ids: list[int] = [tokenizer.boi_id, *tokenizer.query_ids, tokenizer.eoi_id]
        # transformers renamed `past_key_values` to `cache` (deprecated from 5.2x): ask the model.
        params = inspect.signature(llm.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.llm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.lm_head.weight.dtype

    # -- inputs ---------------------------------------------------------------------------
    @torch.no_grad()
    def picture_embeddings(self, pixels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Any-res pictures of all input images, in prompt order -> ``[n, 64, H]``."""
        return self.encoder(pixels.to(self.device), centres.to(self.device)).to(self.dtype)

    @torch.no_grad()
    def prompt_embeddings(self, ids: list[int], pictures: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the query slots (§3.3 ``ids_cmp_mask``) overwritten by the picture
        features, in prompt order."""
        ids_t = torch.tensor([ids], device=self.device)
        embeds = self.llm.model.embed_tokens(ids_t)
        positions = torch.tensor(
            query_positions(ids, self.tokenizer), dtype=torch.long, device=self.device
        )
        slots = len(positions)
        given = 0 if pictures is None else pictures.shape[0] * pictures.shape[1]
        if slots != given:
            raise ValueError(f"prompt has {slots} image-query slots but {given} picture features")
        if slots:
            assert pictures is not None
            embeds[0, positions] = pictures.reshape(-1, pictures.shape[-1]).to(embeds.dtype)
        return embeds  # type: ignore[no-any-return]

    # -- decoding -------------------------------------------------------------------------
    def _forward(
        self, cache: Any, *, ids: list[int] | None = None, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Runs new positions through the trunk; returns their final-norm states ``[T, H]``."""
        if embeds is None:
            embeds = self.llm.model.embed_tokens(torch.tensor([ids], device=self.device))
        out = self.llm.model(inputs_embeds=embeds, use_cache=True, **{self._cache_kwarg: cache})
        return out.last_hidden_state[0]  # type: ignore[no-any-return]

    def _next_token(self, hidden: torch.Tensor, image_pending: bool = False) -> int:
        """The greedy token; ``image_pending`` (an image is required and none made yet) masks
        the 64 queries and ``</img>`` outright: a block they open yields no image and would
        spend the tokens kept for the required one (issue 21, item 6)."""
        logits = self.llm.lm_head(hidden)
        logits[self.image_ids[1:]] = -math.inf if image_pending else self.suppress_value
        return int(torch.argmax(logits))

    def _forced_block(
        self, cache: Any, start: int, budget: int, mode: QueryRowMode
    ) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
        """Feeds the forced tokens after ``image_ids[start]``: (ids, last state, query rows).

        Query rows are returned only for a complete block opened by ``<img>`` (start == 0) whose
        64 queries and ``</img>`` fit in the token budget, as the original's capture requires.
        """
        forced = self.image_ids[start + 1 :][:budget]
        if mode == "one_pass":
            states = self._forward(cache, ids=forced)
        else:
            states = torch.cat([self._forward(cache, ids=[t]) for t in forced])
        complete = start == 0 and len(forced) == len(self.image_ids) - 1
        rows = states[: len(forced) - 1] if complete else None
        return forced, states[-1], rows

    @torch.no_grad()
    def generate(
        self,
        ids: list[int],
        pictures: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 512,
        query_rows: QueryRowMode = "one_pass",
        force_image_after: int | None = None,
    ) -> Generation:
        """Greedy decoding with §5.5's rules; ``force_image_after`` (our extension for requests
        that must return an image) turns the first EOS, or the token after that many text
        tokens, into ``<img>`` when the model has not opened an image by itself."""
        from transformers import DynamicCache

        limit = int(self.folder.config.get("max_position_embeddings", 2048))
        if len(ids) + max_new_tokens > limit:
            # §8.11: SEED-X was trained on <= 880 tokens with a 2048-position RoPE table.
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"model's {limit} positions"
            )
        cache = DynamicCache()
        hidden = self._forward(cache, embeds=self.prompt_embeddings(ids, pictures))[-1]
        result = Generation(prompt_ids=list(ids), output_ids=[])
        last = ids[-1]
        while len(result.output_ids) < max_new_tokens:
            budget = max_new_tokens - len(result.output_ids)
            if last in self.image_ids[:-1]:
                opened_at = len(result.output_ids) - 1  # -1: the prompt itself ends in <img>
                forced, hidden, rows = self._forced_block(
                    cache, self.image_ids.index(last), budget, query_rows
                )
                result.output_ids.extend(forced)
                if rows is not None:
                    embedding = self.encoder.agent.visual_embedding(rows[None])[0]
                    result.images.append(GeneratedImage(rows, embedding, opened_at))
                last = forced[-1]
                continue
            image_pending = force_image_after is not None and not result.images
            token = self._next_token(hidden, image_pending)
            if (
                force_image_after is not None
                and image_pending
                and (token == self.tokenizer.eos_id or len(result.output_ids) >= force_image_after)
            ):
                token = self.image_ids[0]
            result.output_ids.append(token)
            if token == self.tokenizer.eos_id:
                result.finish_reason = "stop"
                break
            hidden = self._forward(cache, ids=[token])[-1]
            last = token
        return result
