"""The SEED-X token ids the plugin needs, read from the serving folder's tokenizer files.

Ids are looked up by string (model spec §8 hazard 2), once per folder and process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.arch import NUM_QUERY_TOKENS
from engine.tokenizer import SeedXTokenizer


@dataclass(frozen=True)
class SeedXTokenIds:
    """Ids of the image markers, the 64 query tokens, BOS and EOS."""

    bos: int
    eos: int
    boi: int  # <img>
    eoi: int  # </img>
    bop: int  # <patch>
    eop: int  # </patch>
    queries: tuple[int, ...]  # <img_00000> .. <img_00063>

    @property
    def image_sequence(self) -> tuple[int, ...]:
        """``<img>``, the 64 queries, ``</img>``: the block the model generates (§5.5 ``S``)."""
        return (self.boi, *self.queries, self.eoi)

    @property
    def block_openers(self) -> tuple[int, ...]:
        """Tokens after which the reference forces the rest of the block (``S[:-1]``)."""
        return self.image_sequence[:-1]

    def image_block(self, num_pictures: int) -> list[int]:
        """§3.3: ``num_pictures - 1`` ``<patch>`` blocks, then the ``<img>`` block."""
        if num_pictures < 1:
            raise ValueError(f"an image has at least one picture, got {num_pictures}")
        patch = [self.bop, *self.queries, self.eop]
        return patch * (num_pictures - 1) + [self.boi, *self.queries, self.eoi]

    @classmethod
    def from_tokenizer(cls, tokenizer: SeedXTokenizer) -> SeedXTokenIds:
        if len(tokenizer.query_ids) != NUM_QUERY_TOKENS:
            raise ValueError(f"expected {NUM_QUERY_TOKENS} query tokens")
        return cls(
            bos=tokenizer.bos_id,
            eos=tokenizer.eos_id,
            boi=tokenizer.boi_id,
            eoi=tokenizer.eoi_id,
            bop=tokenizer.bop_id,
            eop=tokenizer.eop_id,
            queries=tuple(tokenizer.query_ids),
        )


@lru_cache(maxsize=8)
def token_ids_for(folder: str) -> SeedXTokenIds:
    """The ids of the tokenizer in ``folder`` (a serving LLM folder), cached per process."""
    return SeedXTokenIds.from_tokenizer(SeedXTokenizer(Path(folder)))
