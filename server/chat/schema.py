"""Request models of ``POST /v1/chat/completions`` (OpenAI's, plus SEED-X image options).

OpenAI parameters that change the answer but that SEED-X cannot honour (tools, audio, reasoning,
...) are *refused* with a 400 naming the parameter rather than ignored, and so is a field OpenAI
does not have: an app relying on one must not get a silently different answer (STYLE.md §4:
never quietly fix). Logprobs, ``logit_bias`` and JSON answers (``response_format``) are real,
through vLLM (``workers.llm.choice``).

Assistant turns are accepted exactly as this gateway returns them, so a conversation can be sent
back unchanged: ``content`` as a string or as parts with ``image_url`` images (non-streamed
answers), or a string plus ``images`` (what the openai client accumulates from a stream);
``annotations`` are ignored (the box markup is in the text, the worker maps it back to tokens).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.errors import InvalidRequest

MAX_MESSAGES = 256


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str = Field(min_length=1, description="data:image/...;base64 URL or http(s) URL.")
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None, description="Accepted for compatibility; SEED-X's any-res tiling decides."
    )


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURLPart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImageURLPart, Field(discriminator="type")]


class SystemMessage(_Lenient):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Lenient):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: str | list[ContentPart] | None = None
    images: list[ImageURLPart] | None = Field(
        default=None, description="Images of a streamed answer (as accumulated by clients)."
    )
    name: str | None = None
    tool_calls: list[Any] | None = None

    @model_validator(mode="after")
    def _no_tools(self) -> AssistantMessage:
        if self.tool_calls:
            raise ValueError("tool calls are not supported")
        return self


class ToolMessage(_Lenient):
    role: Literal["tool", "function"]

    @model_validator(mode="after")
    def _refuse(self) -> ToolMessage:
        raise ValueError("tool messages are not supported")


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class StreamOptions(_Lenient):
    include_usage: bool = Field(default=False, description="Send a last chunk with usage.")


class ChatImageOptions(BaseModel):
    """SEED-X extension: how images the model emits are rendered (extra body field)."""

    model_config = ConfigDict(extra="forbid")

    size: str | None = Field(
        default=None, pattern=r"^\d{2,4}x\d{2,4}$", description="WIDTHxHEIGHT, multiples of 64."
    )
    steps: int | None = Field(default=None, ge=1, description="Denoising steps.")
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json",
        description="b64_json: data: URLs (self-contained); url: this gateway's content URLs.",
    )
    require: bool = Field(
        default=False,
        description="The answer must contain an image: the model opens one if it has not by "
        "the time only room for one image is left in max_tokens.",
    )


class JSONSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must match."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = Field(
        default=None, description="Accepted: the grammar always holds the answer to the schema."
    )


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: text, any JSON object, or JSON matching a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required exactly when type is json_schema")
        return self


_REFUSED = {  # OpenAI parameters SEED-X cannot honour: a 400 when set to something that matters
    "tools": "tools (function calling) are not supported by SEED-X",
    "functions": "functions (function calling) are not supported by SEED-X",
    "audio": "audio output is not supported by SEED-X",
    "prediction": "predicted outputs are not supported by SEED-X",
    "web_search_options": "web search is not supported by SEED-X",
    "reasoning_effort": "SEED-X is not a reasoning model: reasoning_effort cannot apply",
    "verbosity": "verbosity is not supported by SEED-X",
}
_HARMLESS_VALUES: dict[str, tuple[object, ...]] = {  # values that ask for nothing we lack
    "tool_choice": ("none",),
    "function_call": ("none",),
    "parallel_tool_calls": (False,),
    "store": (False,),
    "service_tier": ("auto", "default"),
}
_ACCEPTED = frozenset(  # hints and labels with no effect on the answer
    {"metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
     "prompt_cache_options", "moderation"}
)  # fmt: skip


def _check_extra(name: str, value: object) -> None:
    """A 400 for a field outside the declared ones unless it is accepted or harmlessly set."""
    if name in _ACCEPTED or value is None:
        return
    if name in _HARMLESS_VALUES:
        if value not in _HARMLESS_VALUES[name]:
            raise InvalidRequest(f"{name}={value!r} is not supported by SEED-X", param=name)
        return
    if name in _REFUSED:
        if value in ([], {}, False):
            return  # an empty list of tools asks for nothing
        raise InvalidRequest(_REFUSED[name], param=name)
    raise InvalidRequest(f"unknown parameter {name!r}", param=name)


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request; see the module docstring for what is refused."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(
        default=None, max_length=128, description="Model id (default: the chat default)."
    )
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = (
        None
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = Field(default=None, description="Logprobs of the answer's tokens.")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Likeliest alternatives per token (needs logprobs)."
    )
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=1024, description="Token id (as a string) -> bias in [-100, 100]."
    )
    user: str | None = Field(default=None, max_length=256)
    modalities: list[Literal["text", "image"]] | None = Field(
        default=None, description='["text", "image"] lets the model answer with images.'
    )
    response_format: ResponseFormat | None = None
    image_options: ChatImageOptions | None = Field(
        default=None, description="SEED-X: size/steps/guidance/seed of generated images."
    )

    def check_supported(self) -> None:
        """Raise a 400 naming the first parameter SEED-X cannot honour or does not know.

        Every OpenAI parameter is either honoured, accepted as a hint, or refused (the audit
        test walks the openai SDK's request type); a name OpenAI does not have is refused too,
        so a typo or another server's extension never passes silently.
        """
        for name, value in (self.model_extra or {}).items():
            _check_extra(name, value)
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise InvalidRequest("at most 4 stop sequences", param="stop")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        if self.json_answer and self.wants_images:
            raise InvalidRequest(
                "a JSON answer cannot hold images: drop response_format or the image modality",
                param="response_format",
            )

    @property
    def json_answer(self) -> bool:
        """Whether ``response_format`` asks for JSON."""
        return self.response_format is not None and self.response_format.type != "text"

    def logit_bias_ids(self) -> dict[int, float] | None:
        """``logit_bias`` with integer token ids; a 400 for a key that is not one."""
        if not self.logit_bias:
            return None
        biases = {}
        for key, bias in self.logit_bias.items():
            if not (key.isascii() and key.isdigit()):  # "²" is a digit int() refuses
                raise InvalidRequest(
                    f"logit_bias key {key!r} is not a token id", param="logit_bias"
                )
            biases[int(key)] = bias
        return biases

    @property
    def wants_images(self) -> bool:
        """Whether the client allows image output (``modalities`` contains "image")."""
        return bool(self.modalities and "image" in self.modalities)

    @property
    def stop_list(self) -> tuple[str, ...]:
        """``stop`` as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
