"""Request models of ``POST /v1/responses`` (OpenAI's Responses API, the subset SEED-X honours).

Unlike chat completions, *every* top-level field the gateway does not know is refused with a 400
naming it: the Responses API is young and grows fields often, and a client relying on one (a
prompt template, a conversation object, background mode) must learn at once that it was not
applied (STYLE.md §4: never quietly fix). Known OpenAI fields SEED-X cannot honour get a message
saying so; the rest say "unknown parameter".

Input items follow OpenAI's shapes, including the ones a client sends back unchanged from a
previous ``response.output`` (``message`` items with ``output_text`` parts, their ids and
statuses, and ``image_generation_call`` items with their base64 ``result``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
)

from server.errors import InvalidRequest, validation_param

MAX_METADATA_KEYS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str | None = Field(
        default=None, description="data:image/...;base64 URL or http(s) URL."
    )
    file_id: str | None = Field(default=None, description="Refused: there is no Files API.")
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None, description="Accepted for compatibility; SEED-X's any-res tiling decides."
    )


class OutputText(_Strict):
    """Text of an earlier assistant turn (annotations are dropped: the box markup is in it)."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


class OtherPart(BaseModel):
    """Any other content part (``input_file``, ``input_audio``, ...): refused by name."""

    model_config = ConfigDict(extra="allow")
    type: str


_PART_TAGS = {"input_text", "input_image", "output_text", "refusal"}


def _part_tag(value: Any) -> str:
    tag = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return tag if tag in _PART_TAGS else "other"


ContentPart = Annotated[
    Annotated[InputText, Tag("input_text")]
    | Annotated[InputImage, Tag("input_image")]
    | Annotated[OutputText, Tag("output_text")]
    | Annotated[Refusal, Tag("refusal")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]


class MessageItem(_Strict):
    """A message: OpenAI's easy input message, input message, or output message sent back."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: str | None = None


class ImageGenerationCallItem(_Strict):
    """An image this API generated, sent back as part of the conversation."""

    type: Literal["image_generation_call"]
    id: str | None = None
    status: str | None = None
    result: str | None = Field(default=None, description="The image, base64.")
    output_format: Literal["png", "jpeg", "webp"] | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    action: str | None = None
    revised_prompt: str | None = None


class OtherItem(BaseModel):
    """Any other item (``function_call_output``, ``item_reference``, ...): refused by name."""

    model_config = ConfigDict(extra="allow")
    type: str


_ITEM_TAGS = {"message", "image_generation_call"}


def _item_tag(value: Any) -> str:
    # an easy input message has no type
    tag = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return tag if tag in _ITEM_TAGS else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[ImageGenerationCallItem, Tag("image_generation_call")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_tag),
]
_ITEMS = TypeAdapter(list[InputItem])


class ImageGenerationTool(_Strict):
    """OpenAI's ``image_generation`` tool: how images the model draws are rendered.

    ``quality`` picks the denoising steps relative to the operator's
    ``bounds.default_steps`` (see :func:`server.responses.translate.steps_for`).
    """

    type: Literal["image_generation"]
    size: str | None = Field(default=None, description="WIDTHxHEIGHT (multiples of 64) or auto.")
    quality: Literal["low", "medium", "high", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    partial_images: int | None = Field(default=None, ge=0, le=3)
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["auto", "low"] | None = None
    action: Literal["auto", "generate", "edit"] | None = None


class TextFormat(_Strict):
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


_UNSUPPORTED = (
    "background",
    "conversation",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "max_tool_calls",
    "stream_options",
    "context_management",
)


class ResponsesRequest(BaseModel):
    """OpenAI's Responses request; see the module docstring for what is refused."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(
        default=None, max_length=128, description="Model id (default: the chat default)."
    )
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)] = Field(
        description="A user message, or a list of input items (messages, images drawn before)."
    )
    instructions: str | None = Field(
        default=None, description="A system message for this response only (not carried over)."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    store: bool = Field(default=True, description="Keep the response for GET and follow-ups.")
    previous_response_id: str | None = Field(default=None, max_length=128)
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    user: str | None = Field(default=None, max_length=256)
    text: TextConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    parallel_tool_calls: bool | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    _items: list[InputItem] | None = PrivateAttr(default=None)

    @property
    def items(self) -> list[InputItem]:
        """``input`` as typed items (checked by :meth:`check_supported`); [] for a string."""
        if isinstance(self.input, str):
            return []
        if self._items is None:
            self._items = _parse_items(self.input)
        return self._items

    def check_supported(self) -> None:
        """Raise a 400 naming the first parameter SEED-X cannot honour (module docstring)."""
        for name in self.model_extra or {}:
            if name in _UNSUPPORTED:
                raise InvalidRequest(f"{name} is not supported by SEED-X", param=name)
            raise InvalidRequest(f"unknown parameter: {name}", param=name)
        if self.reasoning is not None:
            raise InvalidRequest(
                "reasoning is not supported: SEED-X is not a reasoning model", param="reasoning"
            )
        if self.top_logprobs:
            raise InvalidRequest("top_logprobs is not supported by SEED-X", param="top_logprobs")
        if self.include:
            raise InvalidRequest("include must be empty: nothing is includable", param="include")
        if self.truncation == "auto":
            raise InvalidRequest(
                'truncation "auto" is not supported: the input is never cut (use "disabled")',
                param="truncation",
            )
        self._check_text()
        self._check_metadata()
        for i, item in enumerate(self.items):
            _check_item(item, f"input[{i}]")

    def _check_text(self) -> None:
        text = self.text
        if text is None:
            return
        if text.verbosity not in (None, "medium"):
            raise InvalidRequest(
                "text.verbosity is not supported by SEED-X (only 'medium')",
                param="text.verbosity",
            )

    def _check_metadata(self) -> None:
        metadata = self.metadata or {}
        if len(metadata) > MAX_METADATA_KEYS:
            raise InvalidRequest(f"metadata has at most {MAX_METADATA_KEYS} keys", param="metadata")
        for key in metadata:
            if len(key) > 64:
                raise InvalidRequest("metadata keys are at most 64 characters", param="metadata")


def _parse_items(raw: list[dict[str, Any]]) -> list[InputItem]:
    """Validate items one union at a time, so an error names the field inside the item (a
    ``str | list`` union would report the string branch first)."""
    try:
        return _ITEMS.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = validation_param(("input", *first["loc"]), {"input": raw})
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from None


def _check_item(item: MessageItem | ImageGenerationCallItem | OtherItem, where: str) -> None:
    """Refuse item and part types SEED-X cannot take, naming them."""
    if isinstance(item, OtherItem):
        raise InvalidRequest(
            f"input items of type {item.type!r} are not supported by SEED-X "
            "(messages and image_generation_call only)",
            param=f"{where}.type",
        )
    if isinstance(item, ImageGenerationCallItem):
        if not item.result:
            raise InvalidRequest(
                "an image_generation_call item needs its result", param=f"{where}.result"
            )
        return
    if isinstance(item.content, str):
        return
    for j, part in enumerate(item.content):
        _check_part(item.role, part, f"{where}.content[{j}]")


def _check_part(role: str, part: Any, param: str) -> None:
    if isinstance(part, OtherPart):
        raise InvalidRequest(f"content parts of type {part.type!r} are not supported", param=param)
    assistant = role == "assistant"
    if assistant != isinstance(part, OutputText | Refusal):
        expected = "output_text" if assistant else "input_text or input_image"
        raise InvalidRequest(f"{role} content parts must be {expected}", param=param)
    if isinstance(part, InputImage):
        if role != "user":
            raise InvalidRequest(f"{role} messages cannot carry images", param=param)
        if part.file_id is not None:
            raise InvalidRequest(
                "file_id is not supported (no Files API): send image_url",
                param=f"{param}.file_id",
            )
        if not part.image_url:
            raise InvalidRequest("input_image needs image_url", param=f"{param}.image_url")
