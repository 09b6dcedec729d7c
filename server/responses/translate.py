"""A Responses request as a chat completions request, so one code path serves both.

:func:`translate` turns ``instructions`` + the stored conversation of ``previous_response_id`` +
``input`` into chat ``messages``, and the ``image_generation`` tool into chat's image options
(``modalities`` + ``image_options``); :func:`server.chat.service.run_chat` then validates, admits,
loads images and runs the jobs exactly as for ``/v1/chat/completions``.

Errors raised on the chat side name chat parameters (``messages[2].content[1].image_url``,
``max_completion_tokens``, ``image_options.size``); :meth:`Translation.param_of` maps them back to
what this request called them (``input[1].content[1].image_url``, ``max_output_tokens``,
``tools[0].size``), so a client is pointed at its own field.

``quality`` -> denoising steps, relative to the operator's ``bounds.default_steps`` (the steps
the deployment is tuned for): ``low`` half of them, ``medium`` and ``auto`` all of them,
``high`` twice as many (capped at ``bounds.max_steps``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from server.chat.schema import ChatCompletionRequest
from server.errors import InvalidRequest
from server.rendering import ImageSpec, steps_for
from server.responses.schema import (
    ImageGenerationCallItem,
    ImageGenerationTool,
    InputImage,
    InputText,
    MessageItem,
    ResponsesRequest,
)
from server.responses.store import StoredResponse
from server.settings import GatewaySettings

_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\](.*)$")
_IMAGE_SUFFIX = re.compile(r"^\.images\[(\d+)\]")


@dataclass(frozen=True)
class ImagePlan:
    """The request's ``image_generation`` tool, checked."""

    tool_index: int
    tool: ImageGenerationTool
    spec: ImageSpec
    require: bool

    @property
    def quality(self) -> str:
        return self.tool.quality or "auto"


@dataclass
class _Where:
    """Where one chat message came from: its parameter, and whether its parts map 1:1."""

    base: str
    parts_map: bool = False
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Translation:
    """The chat request, where each of its messages came from, and what to store."""

    chat: ChatCompletionRequest
    conversation: list[dict[str, Any]]
    images: ImagePlan | None
    _where: list[_Where]

    def param_of(self, param: str | None) -> str | None:
        """This request's name of a chat-side parameter (module docstring)."""
        if param is None or param == "messages":
            return "input" if param else None
        match = _MESSAGE_PARAM.match(param)
        if match is not None and int(match.group(1)) < len(self._where):
            where, rest = self._where[int(match.group(1))], match.group(2)
            image = _IMAGE_SUFFIX.match(rest)
            if image is not None and int(image.group(1)) < len(where.images):
                return where.images[int(image.group(1))]
            return where.base + rest if where.parts_map else where.base
        if param in ("max_completion_tokens", "max_tokens"):
            return "max_output_tokens"
        if param == "modalities":
            return "tools"
        if param == "response_format":
            return "text.format"
        if param.startswith("image_options.") and self.images is not None:
            name = param.removeprefix("image_options.")
            name = "quality" if name == "steps" else name
            return f"tools[{self.images.tool_index}].{name}"
        return param


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (JSON answers through the worker)."""
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name or "response", "strict": fmt.strict}
    if fmt.schema_ is not None:
        spec["schema"] = fmt.schema_
    if fmt.description is not None:
        spec["description"] = fmt.description
    return {"type": "json_schema", "json_schema": spec}


def _image_plan(settings: GatewaySettings, req: ResponsesRequest) -> ImagePlan | None:
    """The ``image_generation`` tool (400 ``tools`` for any other), with ``tool_choice``."""
    found: tuple[int, ImageGenerationTool] | None = None
    for i, raw in enumerate(req.tools or []):
        kind = raw.get("type")
        if kind != "image_generation":
            raise InvalidRequest(
                f"tools of type {kind!r} are not supported by SEED-X (only image_generation)",
                param="tools",
            )
        if found is not None:
            raise InvalidRequest("at most one image_generation tool", param="tools")
        try:
            found = (i, ImageGenerationTool.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidRequest(
                f"tools[{i}].{where}: {first['msg']}", param=f"tools[{i}].{where}"
            ) from None
    require = _check_tool_choice(req.tool_choice, found is not None)
    if found is None or req.tool_choice == "none":
        return None
    i, tool = found
    if tool.background == "transparent":
        raise InvalidRequest(
            "background 'transparent' is not supported: SEED-X draws opaque images",
            param=f"tools[{i}].background",
        )
    _check_action(settings, req, tool, i)
    bounds = settings.bounds
    spec = ImageSpec.build(
        bounds,
        size=tool.size,
        steps=steps_for(tool.quality, bounds),
        guidance_scale=None,
        seed=None,
        output_format=tool.output_format or "png",
        output_compression=tool.output_compression,
        partial_images=tool.partial_images or 0,
        param_prefix=f"tools[{i}].",
    )
    return ImagePlan(i, tool, spec, require)


def _check_tool_choice(choice: str | dict[str, Any] | None, has_tool: bool) -> bool:
    """Whether ``tool_choice`` forces an image; 400 for choices naming other tools."""
    if choice in (None, "auto", "none"):
        return False
    forced = choice == "required" or (
        isinstance(choice, dict) and choice == {"type": "image_generation"}
    )
    if not forced:
        raise InvalidRequest(
            'tool_choice must be "auto", "none", "required" or {"type": "image_generation"}',
            param="tool_choice",
        )
    if not has_tool:
        raise InvalidRequest(
            "tool_choice forces image_generation, but tools has no image_generation tool",
            param="tool_choice",
        )
    return True


def _check_action(
    settings: GatewaySettings, req: ResponsesRequest, tool: ImageGenerationTool, i: int
) -> None:
    """``action``: SEED-X-Edit (a conditioned de-tokenizer) edits, the others generate."""
    if tool.action in (None, "auto"):
        return
    model = req.model or settings.models.chat
    detokenizer = settings.models.detokenizers.get(model)
    edits = detokenizer in settings.models.conditioned
    if (tool.action == "edit") != edits:
        does = "edits its input image" if edits else "generates new images"
        raise InvalidRequest(
            f"action {tool.action!r}: model {model!r} {does}", param=f"tools[{i}].action"
        )


def image_data_url(b64: str, output_format: str | None) -> str:
    """A generated image (base64) as the data URL chat takes."""
    return f"data:image/{output_format or 'png'};base64,{b64}"


def _chat_message(item: MessageItem) -> dict[str, Any]:
    role = item.role
    if isinstance(item.content, str):
        return {"role": role, "content": item.content}
    parts: list[dict[str, Any]] = []
    for part in item.content:
        if isinstance(part, InputText):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, InputImage):
            image_url = {"url": part.image_url, **({"detail": part.detail} if part.detail else {})}
            parts.append({"type": "image_url", "image_url": image_url})
        else:
            text = getattr(part, "text", None)
            parts.append({"type": "text", "text": text if text is not None else part.refusal})  # type: ignore[union-attr]
    return {"role": role, "content": parts}


def _add_image(
    messages: list[dict[str, Any]], wheres: list[_Where], url: str, base: str, where_image: str
) -> None:
    """An image of an assistant turn: onto the assistant message just before, or a new one."""
    if not messages or messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": ""})
        wheres.append(_Where(base))
    messages[-1].setdefault("images", []).append({"type": "image_url", "image_url": {"url": url}})
    wheres[-1].images.append(where_image)


def _input_messages(req: ResponsesRequest) -> tuple[list[dict[str, Any]], list[_Where]]:
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}], [_Where("input")]
    messages: list[dict[str, Any]] = []
    wheres: list[_Where] = []
    for i, item in enumerate(req.items):
        if isinstance(item, MessageItem):
            messages.append(_chat_message(item))
            wheres.append(_Where(f"input[{i}]", parts_map=True))
        elif isinstance(item, ImageGenerationCallItem) and item.result:
            url = image_data_url(item.result, item.output_format)
            _add_image(messages, wheres, url, f"input[{i}]", f"input[{i}].result")
    return messages, wheres


def assistant_turn(response: dict[str, Any]) -> dict[str, Any] | None:
    """The assistant message of a stored response's output (None when it produced nothing)."""
    text = ""
    images: list[dict[str, Any]] = []
    for item in response.get("output", []):
        if item.get("type") == "message":
            text += "".join(p.get("text", "") for p in item.get("content", []))
        elif item.get("type") == "image_generation_call" and item.get("result"):
            url = image_data_url(item["result"], item.get("output_format"))
            images.append({"type": "image_url", "image_url": {"url": url}})
    if not text and not images:
        return None
    return {"role": "assistant", "content": text, **({"images": images} if images else {})}


def _history(previous: StoredResponse | None) -> list[dict[str, Any]]:
    if previous is None:
        return []
    turn = assistant_turn(previous.response)
    return [*previous.conversation, *([turn] if turn else [])]


def translate(
    settings: GatewaySettings, req: ResponsesRequest, previous: StoredResponse | None
) -> Translation:
    """Check ``req`` (400 naming the parameter) and build the chat request; module docstring."""
    req.check_supported()
    bounds = settings.bounds
    if req.max_output_tokens is not None and req.max_output_tokens > bounds.max_tokens:
        raise InvalidRequest(
            f"max_output_tokens must be at most {bounds.max_tokens}", param="max_output_tokens"
        )
    images = _image_plan(settings, req)
    history = _history(previous)
    new, new_where = _input_messages(req)
    conversation = [*history, *new]
    wheres = [_Where("previous_response_id") for _ in history] + new_where
    messages = list(conversation)
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
        wheres.insert(0, _Where("instructions"))
    turns = [m for m in messages if m["role"] not in ("system", "developer")]
    if not turns or turns[-1]["role"] != "user":
        raise InvalidRequest("the input must end with a user message", param="input")
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_completion_tokens": req.max_output_tokens,
        "user": req.user,
    }
    response_format = _response_format(req)
    if response_format is not None:
        body["response_format"] = response_format
    if images is not None:
        spec = images.spec
        body["modalities"] = ["text", "image"]
        body["image_options"] = {
            "size": spec.size,
            "steps": spec.steps,
            "output_format": spec.output_format,
            "output_compression": spec.output_compression,
            "require": images.require,
        }
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(f"input: {first['msg']}", param="input") from None
    return Translation(chat, conversation, images, wheres)
