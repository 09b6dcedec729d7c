"""The display text of one answer, built incrementally from generated ids.

Rendering (what a client sees in ``message.content``):
* plain text pieces decode with SentencePiece, as ``SeedXTokenizer.display_text`` does;
* box markup stays as text, ``<box_start><loc-a><loc-b><loc-c><loc-d><box_end>``, so a client
  that sends the turn back gets the model's own tokens again
  (``engine.prompts.assistant_text_parts``); the pixel boxes also come as :class:`Box` values;
* every other added or special token (image blocks, ``</s>``) is dropped: generated images
  travel as embeddings, not text.

Streaming decodes a small window of the current text run (vLLM's prefix/read offsets), so a
long answer costs O(n), and holds back a trailing incomplete UTF-8 sequence (U+FFFD) and, when
stop strings are set, the last ``max(len(stop)) - 1`` characters that could still start one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.boxes import Box, parse_boxes_from_ids
from engine.tokenizer import SeedXTokenizer

_SPACE_PIECE = "▁"


class AnswerText:
    """Feeds generated ids, yields new text, completed boxes and whether a stop string hit."""

    def __init__(
        self,
        tokenizer: SeedXTokenizer,
        stop: Sequence[str] = (),
        box_image_size: tuple[int, int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.box_image_size = box_image_size
        self._markup = frozenset([tokenizer.box_start_id, tokenizer.box_end_id, *tokenizer.loc_ids])
        self._hidden = (tokenizer.added_ids | tokenizer.special_ids) - self._markup
        self.ids: list[int] = []
        self.text = ""  # everything rendered so far (after a stop: cut at the stop string)
        self.emitted = 0  # characters of ``text`` already returned
        self.stopped = False
        self._run: list[int] = []  # the current run of plain text ids
        self._prefix = 0
        self._read = 0
        self._boxes_seen = 0

    def feed(self, ids: Sequence[int]) -> tuple[str, list[Box]]:
        """Adds generated ids; returns (new text to emit, boxes completed by these ids)."""
        if self.stopped:
            return "", []
        boxes: list[Box] = []
        for token in ids:
            self.ids.append(token)
            if token in self._hidden:
                continue
            if token in self._markup:
                self._close_run()
                self.text += self.tokenizer.id_to_token(token)
                if token == self.tokenizer.box_end_id:
                    boxes += self._new_boxes()
            else:
                self._run.append(token)
                self.text += self._decode_run()
            if self._check_stop():
                break
        return self._take(final=self.stopped), boxes

    def shows(self, token_id: int) -> bool:
        """Whether ``token_id`` is rendered (text or box markup; not image blocks or EOS)."""
        return token_id not in self._hidden

    def finish(self) -> str:
        """The held-back remainder at the end of the answer."""
        return self._take(final=True)

    # -- internals -----------------------------------------------------------------------------
    def _decode_run(self) -> str:
        decode = self.tokenizer.display_text
        run = self._run
        full = decode(run[self._prefix :])
        if full.endswith("\ufffd"):
            return ""  # an incomplete byte sequence: wait for the next piece
        prefix = decode(run[self._prefix : self._read])
        new = full[len(prefix) :] if full.startswith(prefix) else full
        if self._read == 0 and self.text:
            first = self.tokenizer.id_to_token(run[0])
            if first.startswith(_SPACE_PIECE):
                new = " " + new  # SentencePiece drops the run's leading space; keep it
        self._prefix, self._read = self._read, len(run)
        return new

    def _close_run(self) -> None:
        self._run, self._prefix, self._read = [], 0, 0

    def _check_stop(self) -> bool:
        if not self.stop:
            return False
        start = max(0, self.emitted - self._hold)
        hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        self.stopped = True
        return True

    def _take(self, final: bool) -> str:
        end = len(self.text) if final else max(self.emitted, len(self.text) - self._hold)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

    def _new_boxes(self) -> list[Box]:
        if self.box_image_size is None:
            return []
        found = parse_boxes_from_ids(self.ids, self.tokenizer, self.box_image_size)
        new = found[self._boxes_seen :]
        self._boxes_seen = len(found)
        return new


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
NEG_INF_LOGPROB = -9999.0
"""What OpenAI writes for a logprob of minus infinity (JSON has no infinities)."""


class TokenStrings:
    """OpenAI's ``token`` and ``bytes`` of a token id, for logprobs (cached per id: the
    vocabulary bounds the cache).

    A SentencePiece piece is its text with ``▁`` as a space; a byte-fallback piece ``<0xE2>`` is
    one byte of a longer character, written ``bytes:\\xe2`` as OpenAI writes partial characters;
    added tokens (box markup, ``</s>``) are their own string.
    """

    def __init__(self, tokenizer: SeedXTokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, tuple[int, ...]]] = {}

    def __call__(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        found = self._cache.get(token_id)
        if found is None:
            piece = self.tokenizer.id_to_token(token_id)
            byte = _BYTE_PIECE.match(piece)
            if byte and token_id not in self.tokenizer.added_ids:
                value = int(byte.group(1), 16)
                found = (f"bytes:\\x{value:02x}", (value,))
            else:
                text = piece.replace(_SPACE_PIECE, " ")
                found = (text, tuple(text.encode()))
            self._cache[token_id] = found
        return found


def finite_logprob(value: float) -> float:
    """``value``, with minus infinity (a masked token) as OpenAI's -9999.0."""
    return value if value > NEG_INF_LOGPROB else NEG_INF_LOGPROB
