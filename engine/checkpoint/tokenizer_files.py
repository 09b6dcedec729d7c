"""Writes the released SEED-X tokenizer folder (model spec §3.1) around a SentencePiece model.

The released folder ``cvlm_llama2_tokenizer_100img_and_224loc_addpatch/`` holds four files:
``tokenizer.model`` (LLaMA-2's SentencePiece model), ``added_tokens.json`` (330 strings),
``special_tokens_map.json`` and ``tokenizer_config.json``. Tiny checkpoints write the same four
files around the small model in ``assets/tiny_tokenizer.model`` so that they load through the
real loading code (:mod:`engine.tokenizer`).

The exact ids of the real added tokens are not published (§8 hazard 2). The order used here is a
plausible reconstruction of how the folder was built (image tokens, then box/location tokens,
then the patch markers that the name's "addpatch" suffix suggests were added last), but no code
in this project may depend on it: every id is looked up by string.

This module imports only the standard library and ``sentencepiece`` so that the golden-making
script can load it inside a throwaway transformers-4.30.2 environment.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.checkpoint.layout import TOKENIZER_FILES

TINY_SP_MODEL = Path(__file__).with_name("assets") / "tiny_tokenizer.model"

NUM_QUERY_VOCAB = 100  # <img_00000>..<img_00099> are in the vocabulary; 64 are used
NUM_LOCATIONS = 224  # <loc-0>..<loc-223>

ADDED_TOKEN_STRINGS: tuple[str, ...] = (
    "<img>",
    "</img>",
    *(f"<img_{i:05d}>" for i in range(NUM_QUERY_VOCAB)),
    "<box_start>",
    "<box_end>",
    *(f"<loc-{i}>" for i in range(NUM_LOCATIONS)),
    "<patch>",
    "</patch>",
)
"""The 330 added strings; their position here + the SentencePiece size is the id we write."""

_SPECIAL = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _added_token(content: str, *, typed: bool) -> dict[str, Any]:
    """An ``AddedToken`` as transformers 4.30 serialises it (``__type`` only in the config)."""
    token: dict[str, Any] = {"content": content, **_SPECIAL}
    return {"__type": "AddedToken", **token} if typed else token


def special_tokens_map() -> dict[str, Any]:
    """LLaMA-2's map (bos/eos/unk as non-stripping AddedTokens) plus ``pad_token: "<unk>"`` (§3.1).

    The pad entry is a plain string: what 4.30 writes after ``tok.pad_token = tok.unk_token``.
    """
    return {
        "bos_token": _added_token("<s>", typed=False),
        "eos_token": _added_token("</s>", typed=False),
        "pad_token": "<unk>",
        "unk_token": _added_token("<unk>", typed=False),
    }


def tokenizer_config() -> dict[str, Any]:
    """LLaMA-2's 4.30-era slow-tokenizer config, ``"legacy": false`` included (4.30 ignores it)."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token("<s>", typed=True),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added_token("</s>", typed=True),
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added_token("<unk>", typed=True),
    }


def sp_vocab_size(sp_model_path: Path) -> int:
    import sentencepiece as spm

    return int(spm.SentencePieceProcessor(model_file=str(sp_model_path)).get_piece_size())


def write_tokenizer_folder(
    dest: Path,
    sp_model_path: Path | None = None,
    *,
    added_tokens: Sequence[str] = ADDED_TOKEN_STRINGS,
) -> None:
    """Writes the four files of §3.1 into ``dest`` (created if needed).

    ``sp_model_path`` defaults to the committed tiny model. Added-token ids start at the
    SentencePiece size, in the order of ``added_tokens`` (a permutation of
    :data:`ADDED_TOKEN_STRINGS`; tests pass a shuffled one to prove nothing depends on the order).
    ``added_tokens.json`` is written as transformers 4.30's ``save_pretrained`` does: keys sorted,
    indent 2, which gives the 332-line file seen on the Hub.
    """
    if sorted(added_tokens) != sorted(ADDED_TOKEN_STRINGS):
        raise ValueError("added_tokens must be a permutation of ADDED_TOKEN_STRINGS")
    source = Path(sp_model_path) if sp_model_path is not None else TINY_SP_MODEL
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model_name, added_name, map_name, config_name = TOKENIZER_FILES
    shutil.copyfile(source, dest / model_name)
    base = sp_vocab_size(source)
    ids = {token: base + i for i, token in enumerate(added_tokens)}
    _write_json(dest / added_name, ids, sort_keys=True)
    _write_json(dest / map_name, special_tokens_map(), sort_keys=False)
    _write_json(dest / config_name, tokenizer_config(), sort_keys=False)


def _write_json(path: Path, data: dict[str, Any], *, sort_keys: bool) -> None:
    text = json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")
