"""SEED-X tokenizer: transformers 4.30.2's slow ``LlamaTokenizer`` semantics on bare SentencePiece.

SEED-X was trained and evaluated with transformers 4.30.2 (model spec §3.2, §8 hazard 1); newer
versions tokenize image prompts differently, so we re-implement 4.30.2 here, driven only by the
four files of the released tokenizer folder, and check it against goldens recorded with 4.30.2
itself (``scripts/make_tokenizer_goldens.py``).

Two encoding paths, on purpose:

* **Trained semantics** (:meth:`SeedXTokenizer.encode`): what ``tokenizer.encode(text,
  add_special_tokens=False)`` did in 4.30.2. Every added token *and* ``<s>``, ``</s>``, ``<unk>``
  typed anywhere in the text becomes its special id. Use it for parity checks and goldens only:
  on user text it is a special-token injection hole (a user typing ``<img>`` would open an image
  block; typing ``</s>`` would end the sequence).
* **Safe, id-level** (:meth:`encode_parts`, :meth:`encode_user_text`): the caller says which
  markers it inserts (:class:`Marker`); all ``str`` parts are plain text and never produce an
  added or special id, whatever they contain. Whitespace next to a marker is stripped and every
  text chunk gets its own dummy prefix exactly as 4.30.2 would, so for text without special
  strings both paths give identical ids (tested). Serving builds every prompt this way.

4.30.2 rules reproduced: split on the no-split tokens (added tokens plus the special tokens),
leftmost-longest; next to each of them strip whitespace (``str.strip`` semantics) on the sides its
``AddedToken`` flags say, or on both sides for plain-string tokens (all added tokens); drop empty
chunks; SentencePiece-encode each remaining chunk separately. Decoding follows 4.30.2's
``_decode`` + ``LlamaTokenizer.convert_tokens_to_string``, spacing quirks included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm

from engine.arch import NUM_QUERY_TOKENS
from engine.checkpoint.layout import TOKENIZER_FILES
from engine.checkpoint.tokenizer_files import NUM_LOCATIONS

BOI, EOI, BOP, EOP = "<img>", "</img>", "<patch>", "</patch>"
BOX_START, BOX_END = "<box_start>", "<box_end>"


def query_token(i: int) -> str:
    return f"<img_{i:05d}>"


def loc_token(i: int) -> str:
    return f"<loc-{i}>"


@dataclass(frozen=True)
class Marker:
    """A special or added token that a prompt builder inserts on purpose, named by its string."""

    token: str


@dataclass(frozen=True)
class _Strip:
    left: bool  # strip whitespace at the end of the chunk before the token (AddedToken.lstrip)
    right: bool  # strip whitespace at the start of the chunk after it (AddedToken.rstrip)


_STRIP_BOTH = _Strip(True, True)
_SPECIAL_ATTRS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # 4.30's order, + "_token"
_WRAPPED_BY_LLAMA = ("bos_token", "eos_token", "unk_token", "pad_token")
_LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
_CLEANUPS = (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're")
_TAG = re.compile(r"<[^>]*>")


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _special_values(config: dict[str, Any], smap: dict[str, Any]) -> dict[str, list[Any]]:
    """Special tokens as 4.30 ends up holding them: the map overrides the config's init kwargs.

    A dict value is an ``AddedToken``; a string is kept as a plain string (strip both sides),
    except that ``LlamaTokenizer.__init__`` wraps string bos/eos/unk/pad init kwargs into
    non-stripping ``AddedToken``s.
    """
    values: dict[str, list[Any]] = {}
    for attr in (*(f"{a}_token" for a in _SPECIAL_ATTRS), "additional_special_tokens"):
        if attr in smap:
            value = smap[attr]
        else:
            value = config.get(attr, _LLAMA_DEFAULTS.get(attr))
            if isinstance(value, str) and attr in _WRAPPED_BY_LLAMA:
                value = {"content": value, "lstrip": False, "rstrip": False}
        if value is not None:
            values[attr] = list(value) if isinstance(value, list) else [value]
    return values


def _content(value: Any) -> str:
    return str(value["content"]) if isinstance(value, dict) else str(value)


class SeedXTokenizer:
    """Loads a SEED-X tokenizer folder (the four files of §3.1); no transformers involved.

    Every id is looked up by string from the folder, never assumed (§8 hazard 2).
    """

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        model_file, added_file, map_file, config_file = (folder / n for n in TOKENIZER_FILES)
        for required in (model_file, added_file):
            if not required.is_file():
                raise FileNotFoundError(f"tokenizer folder {folder}: missing {required.name}")
        config = _read_json(config_file, {})
        if config.get("sp_model_kwargs"):
            raise ValueError(f"{config_file}: sp_model_kwargs are not supported")
        self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.sp_vocab_size: int = self._sp.get_piece_size()
        self._added: dict[str, int] = dict(_read_json(added_file, {}))
        self._check_added_ids(added_file)
        self._added_by_id = {i: t for t, i in self._added.items()}
        self.vocab_size: int = self.sp_vocab_size + len(self._added)
        self._clean_up = bool(config.get("clean_up_tokenization_spaces", False))

        values = _special_values(config, _read_json(map_file, {}))
        self._specials = {attr: _content(items[0]) for attr, items in values.items()}
        self._special_strings = frozenset(_content(v) for items in values.values() for v in items)
        rules = {  # AddedToken flags; a later AddedToken wins, as in 4.30's dict
            _content(v): _Strip(bool(v.get("lstrip")), bool(v.get("rstrip")))
            for items in values.values()
            for v in items
            if isinstance(v, dict)
        }
        no_split = set(self._added) | self._special_strings
        self._rules = {token: rules.get(token, _STRIP_BOTH) for token in no_split}
        self.special_ids = frozenset(self.token_to_id(t) for t in self._special_strings)
        self._splitter = self._compile_splitter(no_split)
        self._cache_ids()

    # ---- construction helpers -------------------------------------------------------------

    def _check_added_ids(self, path: Path) -> None:
        """4.30 refuses added ids that are not consecutive from the SentencePiece size."""
        expected = list(range(self.sp_vocab_size, self.sp_vocab_size + len(self._added)))
        if sorted(self._added.values()) != expected:
            raise ValueError(f"{path}: ids must be consecutive from {self.sp_vocab_size}")
        shadowed = [t for t in self._added if self._sp.piece_to_id(t) != self._sp.unk_id()]
        if shadowed:
            raise ValueError(f"{path}: already SentencePiece pieces: {shadowed[:5]}")

    @staticmethod
    def _compile_splitter(tokens: set[str]) -> re.Pattern[str]:
        """Leftmost-longest alternation; equals 4.30's Trie when no two tokens can overlap."""
        if not all(re.fullmatch(r"<[^<>]+>", t) for t in tokens):
            for a in tokens:
                for b in tokens:
                    overlap = any(a.endswith(b[:k]) for k in range(1, min(len(a), len(b))))
                    if a != b and (a in b or overlap):
                        raise ValueError(f"overlapping special tokens {a!r}, {b!r} unsupported")
        ordered = sorted(tokens, key=lambda t: (-len(t), t))
        return re.compile("|".join(re.escape(t) for t in ordered))

    def _cache_ids(self) -> None:
        t = self.token_to_id
        self.bos_id: int = t(self._specials["bos_token"])
        self.eos_id: int = t(self._specials["eos_token"])
        self.unk_id: int = t(self._specials["unk_token"])
        pad = self._specials.get("pad_token")
        self.pad_id: int | None = t(pad) if pad is not None else None
        self.boi_id, self.eoi_id = self.added_id(BOI), self.added_id(EOI)
        self.bop_id, self.eop_id = self.added_id(BOP), self.added_id(EOP)
        self.query_ids: tuple[int, ...] = tuple(
            self.added_id(query_token(i)) for i in range(NUM_QUERY_TOKENS)
        )
        self.box_start_id, self.box_end_id = self.added_id(BOX_START), self.added_id(BOX_END)
        self.loc_ids: tuple[int, ...] = tuple(
            self.added_id(loc_token(i)) for i in range(NUM_LOCATIONS)
        )
        self.added_ids = frozenset(self._added_by_id)

    # ---- vocabulary ------------------------------------------------------------------------

    def added_id(self, token: str) -> int:
        """Id of an added token (``<img>``, ``<loc-7>``...); KeyError names a missing one."""
        try:
            return self._added[token]
        except KeyError:
            raise KeyError(f"added token {token!r} is not in added_tokens.json") from None

    def token_to_id(self, token: str) -> int:
        """Added tokens first, then SentencePiece pieces (as 4.30's convert_tokens_to_ids)."""
        if token in self._added:
            return self._added[token]
        piece_id = int(self._sp.piece_to_id(token))
        if piece_id == self._sp.unk_id() and token != self._sp.id_to_piece(piece_id):
            raise KeyError(f"unknown token {token!r}")
        return piece_id

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside the vocabulary [0, {self.vocab_size})")
        return self._added_by_id.get(token_id) or str(self._sp.id_to_piece(token_id))

    # ---- encoding --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Trained semantics: 4.30.2's ``encode(text, add_special_tokens=False)``.

        Never feed it user text: special strings in it become special ids.
        """
        chunks: list[tuple[bool, str]] = []
        start = 0
        for match in self._splitter.finditer(text):
            if match.start() > start:
                chunks.append((False, text[start : match.start()]))
            chunks.append((True, match.group()))
            start = match.end()
        if start < len(text):
            chunks.append((False, text[start:]))
        return self._encode_chunks(chunks)

    def encode_prompt(self, text: str) -> list[int]:
        """BOS (by hand, as the SEED-X scripts do) + :meth:`encode`. Trained semantics."""
        return [self.bos_id, *self.encode(text)]

    def encode_parts(self, parts: Iterable[str | Marker]) -> list[int]:
        """Safe id-level encoding: markers become their ids, text never does (see module doc).

        Adjacent ``str`` parts are joined first, so ``["a", "b"]`` encodes like ``"ab"``.
        """
        chunks: list[tuple[bool, str]] = []
        for part in parts:
            if isinstance(part, Marker):
                if part.token not in self._rules:
                    raise KeyError(f"marker {part.token!r} is not an added or special token")
                chunks.append((True, part.token))
            elif chunks and not chunks[-1][0]:
                chunks[-1] = (False, chunks[-1][1] + part)
            else:
                chunks.append((False, part))
        return self._encode_chunks(chunks)

    def encode_user_text(self, text: str) -> list[int]:
        """Safe path for one piece of untrusted text: plain SentencePiece, no special ids ever."""
        return self.encode_parts([text])

    def _encode_chunks(self, chunks: list[tuple[bool, str]]) -> list[int]:
        for i, (is_token, token) in enumerate(chunks):
            if not is_token:
                continue
            rule = self._rules[token]
            if rule.right and i + 1 < len(chunks) and not chunks[i + 1][0]:
                chunks[i + 1] = (False, chunks[i + 1][1].lstrip())
            if rule.left and i > 0 and not chunks[i - 1][0]:
                chunks[i - 1] = (False, chunks[i - 1][1].rstrip())
        ids: list[int] = []
        for is_token, chunk in chunks:
            if is_token:
                ids.append(self.token_to_id(chunk))
            elif chunk:
                ids.extend(self._sp.encode(chunk))
        return ids

    # ---- decoding --------------------------------------------------------------------------

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """4.30.2 ``decode``: added tokens joined to the text around them with single spaces."""
        skip = self.special_ids if skip_special_tokens else frozenset()
        tokens = [self.id_to_token(int(i)) for i in ids if int(i) not in skip]
        sub_texts: list[str] = []
        current: list[str] = []
        for token in tokens:
            if token in self._added:
                if current:
                    sub_texts.append(self._pieces_to_string(current))
                    current = []
                sub_texts.append(token)
            else:
                current.append(token)
        if current:
            sub_texts.append(self._pieces_to_string(current))
        text = " ".join(sub_texts)
        if self._clean_up:
            for old in _CLEANUPS:  # 4.30 clean_up_tokenization: drop the space before
                text = text.replace(old, old[1:] if old != " ' " else "'")
        return text

    def _pieces_to_string(self, pieces: list[str]) -> str:
        """4.30.2 ``LlamaTokenizer.convert_tokens_to_string``: space before non-initial specials."""
        out, prev_is_special = "", False
        current: list[str] = []
        for i, piece in enumerate(pieces):
            if piece in self._special_strings:
                if not prev_is_special and i != 0:
                    out += " "
                out += self._sp.decode(current) + piece
                prev_is_special, current = True, []
            else:
                current.append(piece)
                prev_is_special = False
        return out + str(self._sp.decode(current))

    def display_text(self, ids: Sequence[int], *, like_reference: bool = False) -> str:
        """Text for people: every added and special token dropped.

        Default: drop those ids, then decode the rest in one SentencePiece call, so no stray
        spaces are left where tags were. ``like_reference=True`` reproduces the scripts instead
        (drop ``<img>`` and the 64 ids before each ``</img>``, 4.30 decode, then remove every
        ``<...>`` with a regex), which leaves 4.30's joining spaces and also eats literal
        ``<...>`` text the model wrote.
        """
        if not like_reference:
            tags = self.added_ids | self.special_ids
            return str(self._sp.decode([int(i) for i in ids if int(i) not in tags]))
        keep = [True] * len(ids)
        for pos, token_id in enumerate(ids):
            if token_id == self.boi_id:
                keep[pos] = False
            elif token_id == self.eoi_id:
                for q in range(max(0, pos - NUM_QUERY_TOKENS), pos):
                    keep[q] = False
        return _TAG.sub("", self.decode([i for i, k in zip(ids, keep, strict=True) if k]))
