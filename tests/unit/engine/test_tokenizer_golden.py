"""Our tokenizer and prompt builders against ids recorded with transformers 4.30.2 (§3.2, §8.1).

``tests/golden/tokenizer_ids.json`` is written by ``scripts/make_tokenizer_goldens.py`` in a
throwaway venv with the slow ``LlamaTokenizer`` of 4.30.2, on three folder variants: the canonical
one, one whose special_tokens_map.json holds plain strings (4.30 then strips around ``<s>``),
and one with the added-token ids shuffled (nothing may depend on their order).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from engine.checkpoint.tokenizer_files import ADDED_TOKEN_STRINGS, write_tokenizer_folder
from engine.prompts import (
    ImageInput,
    Template,
    Turn,
    build_prompt,
    chat_template,
    edit_template,
    encode_template_trained,
    grounding_template,
    text_to_image_template,
)
from engine.tokenizer import SeedXTokenizer

GOLDEN = json.loads(
    (Path(__file__).parents[2] / "golden" / "tokenizer_ids.json").read_text(encoding="utf-8")
)
VARIANTS: dict[str, dict[str, Any]] = GOLDEN["variants"]


def build_variant_folder(dest: Path, spec: dict[str, Any]) -> Path:
    """The same folder the golden script built for this variant."""
    write_tokenizer_folder(dest, added_tokens=spec.get("added_tokens", ADDED_TOKEN_STRINGS))
    if "special_tokens_map" in spec:
        (dest / "special_tokens_map.json").write_text(json.dumps(spec["special_tokens_map"]))
    if "tokenizer_config" in spec:
        config = json.loads((dest / "tokenizer_config.json").read_text())
        config.update(spec["tokenizer_config"])
        (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


@cache
def _tokenizer(variant: str, root: Path) -> SeedXTokenizer:
    return SeedXTokenizer(build_variant_folder(root / variant, VARIANTS[variant]))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("golden_tokenizers")


def _cases(group: str) -> list[Any]:
    return [
        pytest.param(variant, case, id=f"{variant}-{case.get('name', i)}")
        for variant, results in GOLDEN["results"].items()
        for i, case in enumerate(results[group])
    ]


def test_goldens_come_from_4_30_2() -> None:
    assert GOLDEN["transformers_version"] == "4.30.2"
    assert set(GOLDEN["results"]) == set(VARIANTS)


@pytest.mark.parametrize(("variant", "case"), _cases("texts"))
def test_encode_matches_4_30_2(variant: str, case: dict[str, Any], folders: Path) -> None:
    assert _tokenizer(variant, folders).encode(case["text"]) == case["ids"]


@pytest.mark.parametrize(("variant", "case"), _cases("decodes"))
def test_decode_matches_4_30_2(variant: str, case: dict[str, Any], folders: Path) -> None:
    tok = _tokenizer(variant, folders)
    assert tok.decode(case["ids"], skip_special_tokens=case["skip_special_tokens"]) == case["text"]


def _template(kind: str, args: dict[str, Any]) -> Template:
    """The golden's structured inputs, fed to our builders."""
    pictures = args.get("pictures")
    if kind == "seed-x.question":
        images = (ImageInput(pictures),) if pictures else ()
        return chat_template("seed-x", [Turn("user", args["text"], images)])
    if kind == "seed-x.grounding":
        return grounding_template(args["text"], ImageInput(pictures))
    if kind == "seed-x.text_to_image":
        return text_to_image_template("seed-x", args["text"])
    if kind == "seed-x-i.text_to_image":
        return text_to_image_template("seed-x-i", args["text"])
    if kind == "seed-x-edit.edit":
        return edit_template(args["text"])
    assert kind == "seed-x-i.chat"
    turns = [
        Turn(t["role"], t["text"], tuple(ImageInput(n) for n in t.get("pictures", [])))
        for t in args["turns"]
    ]
    placement = args.get("placement", "before")
    return chat_template("seed-x-i", turns, placement=placement, system=args.get("system"))


@pytest.mark.parametrize(("variant", "case"), _cases("templates"))
def test_prompt_builders_match_4_30_2(variant: str, case: dict[str, Any], folders: Path) -> None:
    tok = _tokenizer(variant, folders)
    template = _template(case["kind"], case["args"])
    assert template.strings() == case["segments"]
    assert list(build_prompt(tok, template).ids) == case["ids"]
    assert encode_template_trained(tok, template) == case["ids"]
