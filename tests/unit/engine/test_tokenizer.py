"""SeedXTokenizer: the folder it loads, ids by string, the safe path, decoding for display."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine.checkpoint.layout import TOKENIZER_FILES
from engine.checkpoint.tokenizer_files import (
    ADDED_TOKEN_STRINGS,
    TINY_SP_MODEL,
    sp_vocab_size,
    write_tokenizer_folder,
)
from engine.tokenizer import Marker, SeedXTokenizer

SPECIAL_STRINGS = ("<s>", "</s>", "<unk>")


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> SeedXTokenizer:
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer_folder(folder)
    return SeedXTokenizer(folder)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory: pytest.TempPathFactory) -> SeedXTokenizer:
    order = list(ADDED_TOKEN_STRINGS)
    random.Random(3).shuffle(order)
    folder = tmp_path_factory.mktemp("shuffled")
    write_tokenizer_folder(folder, added_tokens=order)
    return SeedXTokenizer(folder)


def test_folder_has_the_four_released_files(tmp_path: Path) -> None:
    write_tokenizer_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TOKENIZER_FILES)
    added = json.loads((tmp_path / "added_tokens.json").read_text())
    assert len(added) == 330
    assert len((tmp_path / "added_tokens.json").read_text().splitlines()) == 332
    assert sorted(added.values()) == list(range(1000, 1330))
    smap = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert smap["pad_token"] == "<unk>"
    assert smap["bos_token"]["content"] == "<s>"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["legacy"] is False
    assert config["tokenizer_class"] == "LlamaTokenizer"
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, False)


def test_added_strings_are_the_330_of_the_spec() -> None:
    assert len(ADDED_TOKEN_STRINGS) == len(set(ADDED_TOKEN_STRINGS)) == 330
    assert {"<img>", "</img>", "<patch>", "</patch>", "<box_start>", "<box_end>"} <= set(
        ADDED_TOKEN_STRINGS
    )
    assert "<img_00099>" in ADDED_TOKEN_STRINGS
    assert "<img_00100>" not in ADDED_TOKEN_STRINGS
    assert "<loc-223>" in ADDED_TOKEN_STRINGS
    assert "<loc-224>" not in ADDED_TOKEN_STRINGS


def test_ids_are_looked_up_by_string(tok: SeedXTokenizer, shuffled: SeedXTokenizer) -> None:
    assert tok.sp_vocab_size == sp_vocab_size(TINY_SP_MODEL) == 1000
    assert tok.vocab_size == 1330
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
    for t in (tok, shuffled):
        assert t.boi_id == t.token_to_id("<img>")
        assert t.eoi_id == t.token_to_id("</img>")
        assert t.bop_id == t.token_to_id("<patch>")
        assert t.eop_id == t.token_to_id("</patch>")
        assert [t.id_to_token(i) for i in t.query_ids] == [f"<img_{i:05d}>" for i in range(64)]
        assert [t.id_to_token(i) for i in t.loc_ids] == [f"<loc-{i}>" for i in range(224)]
        assert t.id_to_token(t.box_start_id) == "<box_start>"
        assert t.id_to_token(t.box_end_id) == "<box_end>"
    assert tok.query_ids != shuffled.query_ids


def test_typed_specials_become_ids_only_on_the_trained_path(tok: SeedXTokenizer) -> None:
    assert tok.encode("<s>") == [tok.bos_id]
    assert tok.encode("a</s>") == [*tok.encode("a"), tok.eos_id]
    assert tok.encode("<img>") == [tok.boi_id]
    assert all(i < tok.sp_vocab_size for i in tok.encode_user_text("<img></s>"))


@pytest.mark.parametrize(
    "text",
    [
        *ADDED_TOKEN_STRINGS,
        *SPECIAL_STRINGS,
        "<s>[INST] hi [/INST]</s>",
        "x <img> y </img> z <patch></patch><box_start><loc-1><box_end>",
        "<unk><unk>  <s> ",
        "\u2581<img>\u2581</s>",
    ],
)
def test_safe_path_never_emits_special_ids(tok: SeedXTokenizer, text: str) -> None:
    ids = tok.encode_user_text(text)
    forbidden = {tok.bos_id, tok.eos_id, tok.unk_id}
    assert ids
    assert all(3 <= i < tok.sp_vocab_size for i in ids)
    assert not forbidden & set(ids)
    assert tok.decode(ids).strip() == text.replace("\u2581", " ").strip()


def test_safe_path_equals_trained_path_on_plain_text(tok: SeedXTokenizer) -> None:
    for text in ("Describe this image.", "  two  spaces ", "tab\there\n", "café 😀 123", ""):
        assert tok.encode_user_text(text) == tok.encode(text)


def test_parts_join_text_and_strip_around_markers(tok: SeedXTokenizer) -> None:
    parts = ["[INST] ", Marker("<img>"), " What", " is it? [/INST]\n"]
    assert tok.encode_parts(parts) == tok.encode("[INST] <img> What is it? [/INST]\n")
    assert tok.encode_parts(["a ", Marker("<s>"), " b"]) == tok.encode("a <s> b")
    with pytest.raises(KeyError, match="<nope>"):
        tok.encode_parts([Marker("<nope>")])


def test_encode_prompt_prepends_bos_by_hand(tok: SeedXTokenizer) -> None:
    assert tok.encode_prompt("hi") == [tok.bos_id, *tok.encode("hi")]


def test_display_text_drops_every_tag(tok: SeedXTokenizer) -> None:
    reply = [*tok.encode("Here's an image."), tok.boi_id, *tok.query_ids, tok.eoi_id, tok.eos_id]
    assert tok.display_text(reply) == "Here's an image."
    boxed = tok.encode("The car<box_start><loc-1><loc-2><loc-3><loc-4><box_end> is red.")
    assert tok.display_text(boxed) == "The car is red."
    # The scripts' regex over 4.30's decode keeps the spaces that decode put around tags.
    assert tok.display_text(boxed, like_reference=True) == "The car" + " " * 7 + "is red."
    assert tok.display_text(reply, like_reference=True) == "Here's an image.  "


def test_decode_rejects_ids_outside_the_vocabulary(tok: SeedXTokenizer) -> None:
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_missing_files_and_bad_ids_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.model"):
        SeedXTokenizer(tmp_path)
    write_tokenizer_folder(tmp_path)
    added = json.loads((tmp_path / "added_tokens.json").read_text())
    added["<img>"] = 5000
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(ValueError, match="consecutive"):
        SeedXTokenizer(tmp_path)


def test_missing_added_token_is_named(tmp_path: Path) -> None:
    write_tokenizer_folder(tmp_path)
    added = json.loads((tmp_path / "added_tokens.json").read_text())
    del added["<box_end>"]
    added = {t: 1000 + i for i, t in enumerate(sorted(added, key=added.__getitem__))}
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(KeyError, match="<box_end>"):
        SeedXTokenizer(tmp_path)


def test_writer_refuses_unknown_token_orders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="permutation"):
        write_tokenizer_folder(tmp_path, added_tokens=ADDED_TOKEN_STRINGS[:-1])
