"""Record what transformers 4.30.2's slow LlamaTokenizer does on our tokenizer folders.

The SEED-X reference pins ``transformers==4.30.2`` and encodes prompts with
``tokenizer.encode(prompt, add_special_tokens=False)`` (model spec §3.2). Newer transformers give
different ids (§8 hazard 1), so ``engine/tokenizer.py`` re-implements those semantics on bare
SentencePiece, and ``tests/unit/engine/test_tokenizer_golden.py`` checks it against the ids this
script records in ``tests/golden/tokenizer_ids.json``. The golden file is committed; rerun this
script only when the cases, the tiny SentencePiece model or the tokenizer files change.

How to run (a throwaway venv; never install 4.30.2 into the project venv):

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install "transformers==4.30.2" sentencepiece
    # (if tokenizers<0.14 will not build: pip install --no-deps transformers==4.30.2, then its
    #  runtime deps by hand: "tokenizers<0.14" numpy regex requests pyyaml tqdm filelock
    #  huggingface_hub packaging safetensors)
    /tmp/golden-venv/bin/python scripts/make_tokenizer_goldens.py

It imports only the standard library, transformers and, from this repo,
``engine.checkpoint.tokenizer_files`` (stdlib + sentencepiece), which writes the folders.

The cases are built here from the SEED-X scripts' own string recipes (eval_*.py and
``decode_llava_data`` of src/data/sft_clm.py), independently of ``engine/prompts.py``: the tests
feed the same structured inputs to the id-level prompt builder and compare.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transformers  # noqa: E402
from transformers import LlamaTokenizer  # noqa: E402

from engine.checkpoint.tokenizer_files import ADDED_TOKEN_STRINGS, write_tokenizer_folder  # noqa: E402

OUT = ROOT / "tests" / "golden" / "tokenizer_ids.json"

BOI, EOI, BOP, EOP = "<img>", "</img>", "<patch>", "</patch>"
IMG = "<img_{:05d}>"
QUERIES = "".join(IMG.format(i) for i in range(64))
INSTRUCTION = "[INST] {instruction} [/INST]\n"

# Folder variants: how each differs from write_tokenizer_folder's defaults. The tests rebuild
# the same folders from this spec (it is stored in the golden file).
_shuffled = list(ADDED_TOKEN_STRINGS)
random.Random(7).shuffle(_shuffled)
VARIANTS: dict[str, dict[str, Any]] = {
    "canonical": {},
    # special_tokens_map.json with plain strings: 4.30 then strips whitespace around <s> too.
    # (Texts and decodes only: the templates contain no special-token strings.)
    "plain_special_map": {
        "templates": False,
        "special_tokens_map": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
        },
        "tokenizer_config": {"clean_up_tokenization_spaces": True},
    },
    "shuffled_added_ids": {"added_tokens": _shuffled},
}


def image_string(pictures: int) -> str:
    """§3.3, verbatim recipe of the eval scripts: n-1 patch blocks, then the global block."""
    out = ""
    for _ in range(pictures - 1):
        out += BOP + QUERIES + EOP
    return out + BOI + QUERIES + EOI


TEXT_CASES: list[tuple[str, str]] = [
    ("plain", "Describe this image briefly."),
    ("empty", ""),
    ("only_spaces", "   "),
    ("only_newline", "\n"),
    ("lead_trail_spaces", "  a red cube  "),
    ("double_spaces", "a  red   cube"),
    ("newlines_tabs", "line one\nline two\n\tindented\r\nend\n"),
    ("unicode", "café naïve Zürich 中文 😀 Ångström"),
    ("digits", "There are 1234 cubes, 5.67 spheres and 2024-04-24."),
    ("inst_newline", "[INST] What is this? [/INST]\n"),
    ("markers_spaced", "[INST] <img> text </img> [/INST]\n"),
    ("markers_adjacent_text", "a<img>b</img>c"),
    ("markers_only", "<img><img_00000><img_00063></img>"),
    ("empty_chunk_spaces", "<img>   </img>"),
    ("empty_chunk_mixed_ws", "<patch> \n\t </patch>x"),
    ("marker_padded", " <box_start> "),
    ("marker_newline_after", "</img>\nDescribe"),
    ("marker_newlines_both", "x\n\n<img>\n\ny"),
    ("unicode_ws_around_marker", "a\u3000<img>\u00a0b\u2003"),
    ("box_answer", "The car <box_start><loc-12><loc-34><loc-56><loc-78><box_end> is red."),
    ("two_boxes", "<box_start><loc-0><loc-1><loc-2><loc-3><box_end>and<box_start><loc-223>"),
    ("partial_tags", "<img <img_ <loc-224> <loc-1 </img <<img>> <img_00100> <IMG>"),
    ("unused_queries", "<img_00064><img_00099>"),
    ("bos_alone", "<s>"),
    ("bos_in_text", "hello <s> world"),
    ("eos_adjacent", "a</s>b"),
    ("unk_spaced", " <unk> "),
    ("bos_twice", "<s><s>"),
    ("eos_at_end", "The end.</s>"),
    ("bos_then_inst", "<s>[INST] hi [/INST]"),
    ("special_inside_image", "<img> <s> </img>"),
    ("bos_before_marker", "<s> <img>"),
    ("brackets", "[[ 1, 2 ]] [/INST] [INST]"),
]


def seedx_question(a: dict[str, Any]) -> list[str]:
    img = image_string(a["pictures"]) if a["pictures"] else ""
    return ["Question: {question}\nAnswer:".format_map({"question": img + a["text"]})]


def seedx_grounding(a: dict[str, Any]) -> list[str]:
    img = image_string(a["pictures"]) if a["pictures"] else ""
    return ["{caption} [[ <box_start>".format_map({"caption": img + a["text"]})]


def seedx_text_to_image(a: dict[str, Any]) -> list[str]:
    return [a["text"] + "<img>"]


def seedx_i_text_to_image(a: dict[str, Any]) -> list[str]:
    return [INSTRUCTION.format_map({"instruction": "Generate an image: " + a["text"]})]


def seedx_edit(a: dict[str, Any]) -> list[str]:
    return [INSTRUCTION.format_map({"instruction": image_string(2) + a["text"]})]


def chat(a: dict[str, Any]) -> list[str]:
    """decode_llava_data's layout: every turn tokenized on its own, then concatenated.

    Extension beyond training (needed by an OpenAI client): images may sit in any user turn
    (placed like the first one) and after an assistant turn's text (a generated image).
    """
    segments: list[str] = []
    system = a.get("system") or ""
    if system:
        segments.append(system if system.endswith("\n") else system + "\n")
    for i, turn in enumerate(a["turns"]):
        imgs = "".join(image_string(n) for n in turn.get("pictures", []))
        if turn["role"] == "assistant":
            segments.append(turn["text"] + imgs)
            continue
        if a.get("placement", "before") == "before":
            instruction = imgs + turn["text"]
        else:
            instruction = turn["text"] + imgs
        text = INSTRUCTION.format_map({"instruction": instruction})
        segments.append(text if i == 0 else "\n" + text)
    return segments


RENDERERS = {
    "seed-x.question": seedx_question,
    "seed-x.grounding": seedx_grounding,
    "seed-x.text_to_image": seedx_text_to_image,
    "seed-x-i.text_to_image": seedx_i_text_to_image,
    "seed-x-edit.edit": seedx_edit,
    "seed-x-i.chat": chat,
}

Q = "Describe this image briefly."
TEMPLATE_CASES: list[tuple[str, str, dict[str, Any]]] = [
    *[(f"question_{n}pics", "seed-x.question", {"pictures": n, "text": Q}) for n in (2, 3, 4, 5)],
    ("question_text_only", "seed-x.question", {"pictures": 0, "text": "What is 2+2?"}),
    (
        "grounding",
        "seed-x.grounding",
        {"pictures": 3, "text": "In ths background with a blue sky on the road, there is a car"},
    ),
    ("t2i_seedx", "seed-x.text_to_image", {"text": "a red cube on a table"}),
    ("t2i_seedx_i", "seed-x-i.text_to_image", {"text": "a red cube on a table"}),
    ("edit", "seed-x-edit.edit", {"text": "Make it under the sunset."}),
    *[
        (
            f"chat_{n}pics_{place}",
            "seed-x-i.chat",
            {"placement": place, "turns": [{"role": "user", "text": Q, "pictures": [n]}]},
        )
        for n in (2, 3, 4, 5)
        for place in ("before", "after")
    ],
    (
        "chat_odd_spacing",
        "seed-x-i.chat",
        {"turns": [{"role": "user", "text": "  Where is\tthe car?\n\n", "pictures": [2]}]},
    ),
    (
        "chat_multi_turn",
        "seed-x-i.chat",
        {
            "turns": [
                {"role": "user", "text": "What is in the picture?", "pictures": [3]},
                {"role": "assistant", "text": "A small dog next to an old car."},
                {"role": "user", "text": "Where is the car?"},
                {
                    "role": "assistant",
                    "text": "The car <box_start><loc-40><loc-100><loc-60><loc-80><box_end>.",
                },
                {"role": "user", "text": "Thanks!"},
            ]
        },
    ),
    (
        "chat_generated_image_history",
        "seed-x-i.chat",
        {
            "turns": [
                {"role": "user", "text": "Generate an image: a red cube"},
                {"role": "assistant", "text": "Here's an image.", "pictures": [1]},
                {"role": "user", "text": "Make it blue.", "pictures": [2]},
            ]
        },
    ),
    (
        "chat_system",
        "seed-x-i.chat",
        {
            "system": "You are a helpful assistant.",
            "placement": "after",
            "turns": [
                {"role": "user", "text": "Hi", "pictures": [2, 2]},
                {"role": "assistant", "text": ""},
                {"role": "user", "text": "And now?"},
            ],
        },
    ),
]


def decode_cases(tok: LlamaTokenizer) -> list[list[int]]:
    """Id sequences to decode: encoded cases plus hand-made edge cases."""
    t = tok.convert_tokens_to_ids
    sp = tok.sp_model
    hello, world = sp.piece_to_id("▁Describe"), sp.piece_to_id("▁image")
    dot = sp.piece_to_id(".")
    nl = sp.piece_to_id("<0x0A>")
    ws = sp.piece_to_id("▁")
    byte_e4 = sp.piece_to_id("<0xE4>")
    seqs = [
        [1, 2],
        [0],
        [1, hello, world, dot, 2],
        [hello, 2, world],
        [hello, 1, world, 0, dot],
        [t("<img>"), t("<img_00000>"), t("</img>")],
        [hello, t("<img>"), world],
        [t("</img>"), hello, world, dot, t("<box_start>"), t("<loc-3>"), t("<box_end>"), 2],
        [dot, hello, nl, ws, world, t("<patch>"), nl, t("</patch>")],
        [byte_e4, hello],
        [1, t("<img>"), 2, t("</img>"), 1],
        [2, 2, hello, 1],
        [world, dot, ws, ws],
    ]
    for text in (
        "Here is a picture.",
        "I can't say, isn't it ? yes !",
        " spaced  out ",
        "[INST] " + image_string(2) + "Hi [/INST]\n",
    ):
        seqs.append(tok.encode(text, add_special_tokens=False))
    return seqs


def build_variant(dest: Path, spec: dict[str, Any]) -> LlamaTokenizer:
    write_tokenizer_folder(dest, added_tokens=spec.get("added_tokens", ADDED_TOKEN_STRINGS))
    if "special_tokens_map" in spec:
        (dest / "special_tokens_map.json").write_text(json.dumps(spec["special_tokens_map"]))
    if "tokenizer_config" in spec:
        config = json.loads((dest / "tokenizer_config.json").read_text())
        config.update(spec["tokenizer_config"])
        (dest / "tokenizer_config.json").write_text(json.dumps(config))
    tok = LlamaTokenizer.from_pretrained(str(dest))
    assert type(tok) is LlamaTokenizer, type(tok)
    return tok


def record(tok: LlamaTokenizer, *, with_templates: bool) -> dict[str, Any]:
    def enc(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    texts = [
        {"name": name, "text": text, "ids": enc(text), "tokens": tok.tokenize(text)}
        for name, text in TEXT_CASES
    ]
    templates = []
    for name, kind, args in TEMPLATE_CASES if with_templates else []:
        segments = RENDERERS[kind](args)
        ids = [tok.bos_token_id]
        for seg in segments:
            ids += enc(seg)
        templates.append(
            {"name": name, "kind": kind, "args": args, "segments": segments, "ids": ids}
        )
    decodes = []
    for ids in decode_cases(tok):
        for skip in (False, True):
            text = tok.decode(ids, skip_special_tokens=skip)
            decodes.append({"ids": ids, "skip_special_tokens": skip, "text": text})
    return {"texts": texts, "templates": templates, "decodes": decodes}


def dump(data: dict[str, Any]) -> str:
    """JSON with one case per line, so diffs stay readable."""
    lines = ["{"]
    lines.append(f'  "transformers_version": {json.dumps(data["transformers_version"])},')
    lines.append(f'  "variants": {json.dumps(data["variants"], ensure_ascii=False)},')
    lines.append('  "results": {')
    names = list(data["results"])
    for vi, variant in enumerate(names):
        lines.append(f"    {json.dumps(variant)}: {{")
        groups = list(data["results"][variant])
        for gi, group in enumerate(groups):
            lines.append(f"      {json.dumps(group)}: [")
            items = data["results"][variant][group]
            for ii, item in enumerate(items):
                comma = "," if ii < len(items) - 1 else ""
                lines.append("        " + json.dumps(item, ensure_ascii=False) + comma)
            lines.append("      ]" + ("," if gi < len(groups) - 1 else ""))
        lines.append("    }" + ("," if vi < len(names) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    if transformers.__version__ != "4.30.2":
        print(f"need transformers==4.30.2, found {transformers.__version__}", file=sys.stderr)
        return 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in VARIANTS.items():
            tok = build_variant(Path(tmp) / name, spec)
            results[name] = record(tok, with_templates=spec.get("templates", True))
    data = {
        "transformers_version": transformers.__version__,
        "variants": VARIANTS,
        "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(dump(data), encoding="utf-8")
    json.loads(OUT.read_text(encoding="utf-8"))  # well-formed
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
