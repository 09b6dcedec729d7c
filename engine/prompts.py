"""SEED-X prompt templates (model spec §3.3-§3.5), built at the token-id level.

A prompt is first a :class:`Template`: segments made of plain text (``str``) and the markers we
insert on purpose (:class:`~engine.tokenizer.Marker`: image blocks, ``<box_start>``, ``<img>``).
Each segment is tokenized on its own, because the training code (``decode_llava_data``)
tokenized every turn separately and concatenated the ids: a later user turn
``"\\n[INST] ... [/INST]\\n"`` and every assistant reply start with their own dummy-prefix piece.

Two ways to turn a template into ids:

* :func:`build_prompt` (serving): markers become ids, text goes through the safe path, so a
  user typing ``<img>`` or ``</s>`` gets plain text pieces, never special ids.
* :func:`encode_template_trained` (parity): render each segment as the exact string the
  SEED-X scripts format and encode it with 4.30.2 semantics. Both give the same ids whenever the
  text contains no special strings (tested, and checked against 4.30.2 goldens).

Images: an input image of ``n`` pictures (n-1 any-res tiles + the global view, §4) is written
as n-1 ``<patch>`` blocks and one ``<img>`` block of 64 query tokens each (66·n tokens). Images
may sit in any user turn (before or after its text, both seen in training), and after the text
of an assistant turn: a generated image sent back by an OpenAI client, written as one
``<img>`` block (``ImageInput(1)``). Training only ever had images in the first user turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from engine.arch import NUM_QUERY_TOKENS
from engine.checkpoint.tokenizer_files import NUM_LOCATIONS
from engine.tokenizer import (
    BOI,
    BOP,
    BOX_END,
    BOX_START,
    EOI,
    EOP,
    Marker,
    SeedXTokenizer,
    loc_token,
    query_token,
)

ModelName = Literal["seed-x", "seed-x-i", "seed-x-edit"]
Placement = Literal["before", "after"]
Role = Literal["user", "assistant"]
Part = str | Marker
Segment = tuple[Part, ...]

INSTRUCTION = "[INST] {instruction} [/INST]\n"  # SEED-X-I / -Edit turns (§3.4)
TURN_SEP = "\n"  # before every user turn but the first (§3.5)
EDIT_PICTURES = 2  # SEED-X-Edit input: the 1x1 grid = 1 tile + the global view (132 tokens)
_LOC = r"<loc-(0|[1-9][0-9]{0,2})>"
_BOX_MARKUP = re.compile("<box_start>" + _LOC * 4 + "<box_end>")


@dataclass(frozen=True)
class ImageInput:
    """One image in a conversation, by the number of pictures the ViT sees for it."""

    num_pictures: int  # any-res tiles + 1 global view (AnyResImage.num_pictures); 1 = global only

    def __post_init__(self) -> None:
        if self.num_pictures < 1:
            raise ValueError(f"an image has at least one picture, got {self.num_pictures}")

    @property
    def num_tokens(self) -> int:
        return self.num_pictures * (NUM_QUERY_TOKENS + 2)


@dataclass(frozen=True)
class Turn:
    """One message. User images go before/after the text; assistant images after it."""

    role: Role
    text: str = ""
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True)
class Template:
    """A prompt before tokenization; ``images`` lists every image in prompt order."""

    segments: tuple[Segment, ...]
    images: tuple[ImageInput, ...] = ()

    def strings(self) -> list[str]:
        """Each segment as the exact string the SEED-X scripts would format."""
        return ["".join(p if isinstance(p, str) else p.token for p in seg) for seg in self.segments]


@dataclass(frozen=True)
class Prompt:
    """Token ids (BOS first) and where the image features go."""

    ids: tuple[int, ...]
    query_positions: tuple[int, ...]  # ids_cmp_mask as positions, in order (pictures x 64)
    images: tuple[ImageInput, ...]

    @property
    def ids_cmp_mask(self) -> list[bool]:
        mask = [False] * len(self.ids)
        for pos in self.query_positions:
            mask[pos] = True
        return mask


def image_parts(image: ImageInput) -> list[Marker]:
    """§3.3: n-1 ``<patch>`` blocks, then the ``<img>`` block; 64 query markers in each."""
    queries = [Marker(query_token(i)) for i in range(NUM_QUERY_TOKENS)]
    parts: list[Marker] = []
    for _ in range(image.num_pictures - 1):
        parts += [Marker(BOP), *queries, Marker(EOP)]
    return [*parts, Marker(BOI), *queries, Marker(EOI)]


def image_string(image: ImageInput) -> str:
    """The §3.3 image string, as the eval scripts build it."""
    return "".join(m.token for m in image_parts(image))


def assistant_text_parts(text: str) -> list[Part]:
    """Assistant history text; complete box markup becomes markers, all else stays text.

    A reply that carried ``<box_start><loc-a><loc-b><loc-c><loc-d><box_end>`` is given back the
    model's own tokens. Only that exact, in-range shape is converted: box and location ids can
    neither open an image block nor end the sequence, so this is no injection path.
    """
    parts: list[Part] = []
    start = 0
    for match in _BOX_MARKUP.finditer(text):
        locs = [int(v) for v in match.groups()]
        if max(locs) >= NUM_LOCATIONS:
            continue
        parts += [text[start : match.start()], Marker(BOX_START)]
        parts += [*(Marker(loc_token(v)) for v in locs), Marker(BOX_END)]
        start = match.end()
    return [*parts, text[start:]]


def _with_images(text: str, images: Sequence[ImageInput], placement: Placement) -> list[Part]:
    blocks: list[Part] = [m for image in images for m in image_parts(image)]
    return [*blocks, text] if placement == "before" else [text, *blocks]


def _check_turns(turns: Sequence[Turn], placement: str) -> None:
    if placement not in get_args(Placement):
        raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    for turn in turns:
        if turn.role not in get_args(Role):
            raise ValueError(f"unknown role {turn.role!r}")
    if turns[-1].role != "user":
        raise ValueError("the last turn must be the user's: the model answers it")


def chat_template(
    model: ModelName,
    turns: Sequence[Turn],
    *,
    placement: Placement = "before",
    system: str | None = None,
) -> Template:
    """Comprehension / chat prompt for any model (§3.4, §3.5).

    ``seed-x`` (pre-trained) has no chat format: one user turn, ``Question: {img}{q}\\nAnswer:``.
    ``seed-x-i`` and ``seed-x-edit``: ``[INST] {img}{user} [/INST]\\n``; earlier assistant
    replies appended without ``</s>`` (their box markup kept as tokens, see
    :func:`assistant_text_parts`; their images after their text); every later user turn
    prefixed with ``\\n``. ``system`` follows the training code's (unused) ``system_message``
    path: its own segment, ending in ``\\n``.
    """
    _check_turns(turns, placement)
    images = tuple(image for turn in turns for image in turn.images)
    if model == "seed-x":
        if len(turns) != 1 or system:
            raise ValueError("seed-x (pre-trained) takes a single user turn and no system prompt")
        body = _with_images(turns[0].text, turns[0].images, placement)
        return Template((("Question: ", *body, "\nAnswer:"),), images)
    if model not in ("seed-x-i", "seed-x-edit"):
        raise ValueError(f"unknown model {model!r}")
    segments: list[Segment] = []
    if system:
        segments.append((system if system.endswith("\n") else system + "\n",))
    for i, turn in enumerate(turns):
        if turn.role == "assistant":
            blocks = [m for image in turn.images for m in image_parts(image)]
            segments.append((*assistant_text_parts(turn.text), *blocks))
            continue
        head, tail = INSTRUCTION.split("{instruction}")
        body = _with_images(turn.text, turn.images, placement)
        segments.append(((TURN_SEP if i else "") + head, *body, tail))
    return Template(tuple(segments), images)


def grounding_template(caption: str, image: ImageInput | None = None) -> Template:
    """SEED-X (pre-trained) grounding: ``{img}{caption} [[ <box_start>``; the model continues
    with four ``<loc-N>`` and ``<box_end>`` (parse with ``prompt_ends_with_box_start=True``)."""
    images = (image,) if image is not None else ()
    body = _with_images(caption, images, "before")
    return Template(((*body, " [[ ", Marker(BOX_START)),), images)


def text_to_image_template(model: ModelName, caption: str) -> Template:
    """``seed-x``: ``{caption}<img>`` forces an image now; ``seed-x-i``: an [INST] request."""
    if model == "seed-x":
        return Template(((caption, Marker(BOI)),))
    if model == "seed-x-i":
        return chat_template(model, [Turn("user", "Generate an image: " + caption)])
    raise ValueError(f"{model!r} has no text-to-image template (seed-x-edit edits images)")


def edit_template(instruction: str, num_pictures: int = EDIT_PICTURES) -> Template:
    """SEED-X-Edit: ``[INST] {img}{instruction} [/INST]\\n`` with the 1x1-grid image (132 ids)."""
    turn = Turn("user", instruction, (ImageInput(num_pictures),))
    return chat_template("seed-x-edit", [turn])


def query_positions(ids: Sequence[int], tokenizer: SeedXTokenizer) -> list[int]:
    """Positions strictly between each begin marker and its matching end (``ids_cmp_mask``).

    ``<patch>`` pairs with ``</patch>`` and ``<img>`` with ``</img>``; blocks may not nest. A
    block still open at the end (a prompt ending in ``<img>``) is ignored, as in the reference.
    """
    closing = {tokenizer.boi_id: tokenizer.eoi_id, tokenizer.bop_id: tokenizer.eop_id}
    positions: list[int] = []
    open_at: int | None = None
    for pos, token_id in enumerate(ids):
        if token_id in closing:
            if open_at is not None:
                raise ValueError(f"image block opened at {open_at} is not closed before {pos}")
            open_at = pos
        elif token_id in (tokenizer.eoi_id, tokenizer.eop_id):
            if open_at is None or closing[ids[open_at]] != token_id:
                raise ValueError(f"unmatched image end marker at {pos}")
            positions.extend(range(open_at + 1, pos))
            open_at = None
    return positions


def build_prompt(tokenizer: SeedXTokenizer, template: Template) -> Prompt:
    """Serving path: BOS + each segment through :meth:`SeedXTokenizer.encode_parts`."""
    ids = [tokenizer.bos_id]
    for segment in template.segments:
        ids += tokenizer.encode_parts(segment)
    positions = query_positions(ids, tokenizer)
    expected = sum(image.num_pictures for image in template.images) * NUM_QUERY_TOKENS
    if len(positions) != expected:  # guards the builders above
        raise ValueError(f"prompt has {len(positions)} query slots, images need {expected}")
    return Prompt(tuple(ids), tuple(positions), template.images)


def encode_template_trained(tokenizer: SeedXTokenizer, template: Template) -> list[int]:
    """Parity path: BOS + 4.30.2 ``encode`` of each segment's exact string (never user input)."""
    ids = [tokenizer.bos_id]
    for text in template.strings():
        ids += tokenizer.encode(text)
    return ids
