"""Request models of ``POST /v1/chat/completions`` (OpenAI's, plus SEED-X image options).

Unknown fields are ignored, as OpenAI-compatible servers do for parameters they do not know.
OpenAI parameters that change the answer but that SEED-X cannot honour (tools, logprobs, JSON
mode, ...) are *refused* with a 400 naming the parameter rather than ignored: an app
relying on them must not get a silently different answer (STYLE.md §4: never quietly fix).

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


_REFUSED_IF_SET = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "audio",
    "prediction",
    "web_search_options",
)
_REFUSED_IF_TRUE = ("logprobs", "parallel_tool_calls")
_REFUSED_IF_NONZERO = ("top_logprobs",)


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
    user: str | None = Field(default=None, max_length=256)
    modalities: list[Literal["text", "image"]] | None = Field(
        default=None, description='["text", "image"] lets the model answer with images.'
    )
    response_format: dict[str, Any] | None = None
    image_options: ChatImageOptions | None = Field(
        default=None, description="SEED-X: size/steps/guidance/seed of generated images."
    )

    def check_supported(self) -> None:
        """Raise a 400 naming the first parameter SEED-X cannot honour (module docstring)."""
        extra = self.model_extra or {}
        for name in _REFUSED_IF_SET:
            if extra.get(name):
                raise InvalidRequest(f"{name} is not supported by SEED-X", param=name)
        for name in _REFUSED_IF_TRUE:
            if extra.get(name) is True:
                raise InvalidRequest(f"{name} is not supported by SEED-X", param=name)
        for name in _REFUSED_IF_NONZERO:
            if extra.get(name) not in (None, 0, 0.0):
                raise InvalidRequest(f"{name} is not supported by SEED-X (only 0)", param=name)
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise InvalidRequest(
                "response_format other than text is not supported by SEED-X",
                param="response_format",
            )
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise InvalidRequest("at most 4 stop sequences", param="stop")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true", param="stream_options"
            )

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
