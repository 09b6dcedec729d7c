"""Train the tiny LLaMA-like SentencePiece model used by tiny checkpoints and the tokenizer tests.

Run once (the result is committed, tests never retrain):

    . .venv/bin/activate
    python scripts/make_tiny_tokenizer.py   # -> engine/checkpoint/assets/tiny_tokenizer.model

The model copies LLaMA's ``trainer_spec``/``normalizer_spec`` where it matters for tokenization
semantics: BPE, byte fallback, ``<unk>``=0 ``<s>``=1 ``</s>``=2, no pad piece, dummy prefix on,
identity normalisation, extra whitespace kept, digits split, whitespace-only pieces allowed.
Only the vocabulary size differs (1000 instead of 32000) so that the tiny LLM stays small.

The corpus is generated here, deterministically, from fixed word lists, the Zen of Python
(``this`` module, stable across Python versions) and a seeded ``random.Random``. It contains no
``<...>`` tags, so no SentencePiece piece can collide with an added-token string (checked below:
transformers 4.30 would map such a piece to the added id).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import random
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "engine" / "checkpoint" / "assets" / "tiny_tokenizer.model"
VOCAB_SIZE = 1000
SEED = 20240424

SUBJECTS = (
    "a red cube",
    "the blue sky",
    "a small dog",
    "an old car",
    "the cat",
    "a tall tree",
    "two men",
    "a woman",
    "the road",
    "a green apple",
    "a white house",
    "the river",
    "a yellow flower",
    "an advisor",
    "a wooden table",
    "the city",
    "a mountain",
    "the beach",
    "a bird",
    "a robot",
    "a cup of coffee",
    "the street",
    "a black horse",
    "a bicycle",
    "the window",
    "a painting",
    "a photo",
    "the background",
    "a face mask",
    "a computer",
    "a sunset",
    "the ocean",
)
VERBS = (
    "is standing on",
    "is sitting near",
    "is next to",
    "is behind",
    "is in front of",
    "is under",
    "is above",
    "looks at",
    "is running to",
    "is holding",
    "is parked on",
    "is floating over",
)
QUESTIONS = (
    "Describe this image briefly.",
    "What is in the picture?",
    "Where is the car?",
    "How many people are there?",
    "What color is the cube?",
    "Can I connect with an advisor?",
    "Is there anything that can protect me from the flu?",
    "Show me the location.",
    "What is the man holding?",
    "Which animal is on the left?",
    "Why is the sky blue?",
)
GEN_PROMPTS = (
    "Generate an image:",
    "Generate a picture of",
    "Draw a painting:",
    "Please show me a picture of",
    "Can you make an image of",
    "Show me a photograph of",
    "I want to see a picture of",
)
RESPONSES = (
    "Here is a picture.",
    "I have designed an image.",
    "Here's an image.",
    "Enjoy this photo.",
    "Sure, here is a picture.",
    "Of course, here is a photo.",
    "Certainly, here's an image.",
)
EDITS = (
    "Make it under the sunset.",
    "Remove the car.",
    "Change the sky to red.",
    "Add a hat.",
    "Turn the cube green.",
    "Make it look like a painting.",
)
EXTRA_WORDS = (
    "Question",
    "Answer",
    "INST",
    "image",
    "images",
    "cube",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "width",
    "height",
    "box",
    "location",
    "detection",
    "grounding",
    "caption",
    "instruction",
    "assistant",
    "user",
    "café",
    "naïve",
    "Zürich",
    "résumé",
    "façade",
    "Ångström",
    "jalapeño",
    "über",
)


def zen_of_python() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # the import prints the Zen; keep stdout clean

    return [line for line in codecs.decode(this.s, "rot13").splitlines() if line.strip()]


def corpus(rng: random.Random) -> list[str]:
    """Sentences that look like SEED-X prompts and answers, with odd spacing and numbers."""
    lines = zen_of_python()
    for _ in range(4000):
        kind = rng.randrange(6)
        subj, obj = rng.choice(SUBJECTS), rng.choice(SUBJECTS)
        sentence = f"{subj.capitalize()} {rng.choice(VERBS)} {obj}."
        if kind == 0:
            lines.append(f"[INST] {rng.choice(QUESTIONS)} [/INST]\n{sentence}")
        elif kind == 1:
            lines.append(f"Question: {rng.choice(QUESTIONS)}\nAnswer: {sentence}")
        elif kind == 2:
            ask, reply = rng.choice(GEN_PROMPTS), rng.choice(RESPONSES)
            lines.append(f"[INST] {ask} {subj} [/INST]\n{reply}")
        elif kind == 3:
            lines.append(f"[INST] {rng.choice(EDITS)} [/INST]\n{rng.choice(RESPONSES)}")
        elif kind == 4:
            nums = " ".join(str(rng.randrange(2000)) for _ in range(4))
            word = rng.choice(EXTRA_WORDS)
            lines.append(f"{sentence} [[ {nums} ]]  ({word})\t{rng.random():.3f}")
        else:
            words = " ".join(rng.choice(EXTRA_WORDS) for _ in range(8))
            lines.append(f"{words}, {sentence.lower()}  {subj}!")
    return lines


def train(out: Path) -> None:
    lines = corpus(random.Random(SEED))
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        # One sentence per line for the trainer: newlines inside a sample become their own lines.
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")
        prefix = Path(tmp) / "tiny"
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(prefix),
            model_type="bpe",
            vocab_size=VOCAB_SIZE,
            character_coverage=1.0,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            split_by_unicode_script=True,
            split_by_number=True,
            split_by_whitespace=True,
            max_sentencepiece_length=16,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            unk_surface=" \u2047 ",
            num_threads=1,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(_without_temp_paths(prefix.with_suffix(".model").read_bytes()))
    check(out)


def _without_temp_paths(model: bytes) -> bytes:
    """Blanks the trainer's temporary input/prefix paths so that retraining gives the same bytes."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(model)
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    return proto.SerializeToString()


def check(path: Path) -> None:
    """Refuses a model whose pieces could be confused with the added tokens or specials."""
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    bad = [
        sp.id_to_piece(i)
        for i in range(3, sp.get_piece_size())
        if "<" in sp.id_to_piece(i) and not sp.is_byte(i)
    ]
    assert not bad, f"pieces containing '<' would risk colliding with added tokens: {bad}"
    print(f"{path}: {sp.get_piece_size()} pieces, {path.stat().st_size} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    train(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
