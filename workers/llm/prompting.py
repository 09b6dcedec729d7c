"""Wire chat jobs -> SEED-X prompts (token ids) with their images, for one served model.

``task="chat"``: the conversation through ``engine.prompts.chat_template`` (seed-x: one user
turn; seed-x-i / -edit: ``[INST]`` turns, system prompt, history). ``task="generate"``: the
text-to-image template of the last user text, an image required. ``task="edit"``: SEED-X-Edit's
template on the first image of the last user message, an image required.

Each user image's picture count comes from the model's any-res rules
(``engine.image_rules.ImageRules``), the same function the vLLM processor applies, so
the blocks written here are the ones it looks for. An image in an assistant turn is one the model
generated, sent back unchanged by an OpenAI client: it is written as SEED-X wrote it, one
``<img>`` block after the turn's text (``ImageInput(1)``), and handed to vLLM as a
:class:`~engine.anyres.GlobalViewImage` (the any-res global view alone, no tiles).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from engine.anyres import GlobalViewImage
from engine.image_rules import ImageRules
from engine.prompts import (
    ImageInput,
    Turn,
    build_prompt,
    chat_template,
    edit_template,
    text_to_image_template,
)
from engine.tokenizer import SeedXTokenizer
from workers.protocol import ChatJob, ImagePart, TextPart

MAX_IMAGE_PIXELS = 64_000_000


class BadRequest(ValueError):
    """The job cannot be served as given; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class PreparedPrompt:
    ids: tuple[int, ...]
    images: tuple[Image.Image | GlobalViewImage, ...]  # prompt order
    image_required: bool
    box_image_size: tuple[int, int] | None  # boxes refer to the prompt's first image


def decode_image(data: bytes, where: str) -> Image.Image:
    """Bytes of a blob -> an RGB PIL image; raises BadRequest for unreadable or huge images."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise BadRequest(f"image has {opened.width}x{opened.height} pixels", where)
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise BadRequest(f"unreadable image: {exc}", where) from None


def _text(parts: tuple[TextPart | ImagePart, ...]) -> str:
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def prepare_prompt(
    job: ChatJob,
    images: list[list[Image.Image]],
    model: str,
    tokenizer: SeedXTokenizer,
    rules: ImageRules,
) -> PreparedPrompt:
    """``images[i]``: the decoded images of ``job.messages[i]``, in part order."""
    last_user = max(
        (i for i, m in enumerate(job.messages) if m.role == "user"),
        default=None,
    )
    if last_user is None:
        raise BadRequest("the conversation has no user message", "messages")
    if job.task == "generate":
        template = text_to_image_template(model, _text(job.messages[last_user].content))  # type: ignore[arg-type]
        return PreparedPrompt(build_prompt(tokenizer, template).ids, (), True, None)
    if job.task == "edit":
        if not images[last_user]:
            raise BadRequest("an edit needs a source image in the last user message", "messages")
        source = images[last_user][0]
        n = rules.num_pictures(*source.size)
        template = edit_template(_text(job.messages[last_user].content), n)
        return PreparedPrompt(build_prompt(tokenizer, template).ids, (source,), True, None)
    return _chat(job, images, model, tokenizer, rules)


def _chat(
    job: ChatJob,
    images: list[list[Image.Image]],
    model: str,
    tokenizer: SeedXTokenizer,
    rules: ImageRules,
) -> PreparedPrompt:
    system = "\n".join(_text(m.content) for m in job.messages if m.role == "system") or None
    turns: list[Turn] = []
    ordered: list[Image.Image | GlobalViewImage] = []
    for message, message_images in zip(job.messages, images, strict=True):
        if message.role == "system":
            if message_images:
                raise BadRequest("a system message cannot carry images", "messages")
            continue
        if message.role == "assistant":
            inputs = tuple(ImageInput(1) for _ in message_images)
            ordered += [GlobalViewImage(i) for i in message_images]
        else:
            inputs = tuple(ImageInput(rules.num_pictures(*i.size)) for i in message_images)
            ordered += message_images
        turns.append(Turn(message.role, _text(message.content), inputs))
    try:
        template = chat_template(model, turns, system=system)  # type: ignore[arg-type]
    except ValueError as exc:
        raise BadRequest(str(exc), "messages") from None
    size = ordered[0].size if ordered else None
    return PreparedPrompt(
        build_prompt(tokenizer, template).ids, tuple(ordered), job.require_image, size
    )
