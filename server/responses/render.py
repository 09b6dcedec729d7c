"""Chat outputs as a Response object, and the events that build it.

:class:`ResponseBuilder` is the one state machine of an answer: each chat output
(:mod:`server.orchestrate`) goes in, the Responses stream events it causes come out (without
``sequence_number``, which the stream adds), and :meth:`ResponseBuilder.response` is the Response
object at any point. The non-streamed path feeds the same builder and ignores the events, so
``response.completed`` of a stream and the JSON answer are the same object.

Output items, in the order they first appear:

* one ``message`` (``output_text`` part), opened at the first text or box and closed when the
  answer finishes (status ``incomplete`` when ``max_output_tokens`` cut it). Boxes are
  annotations of that part, in chat's shape (``{"type": "bounding_box", "bounding_box":
  {...}}``); in a stream each comes as ``response.output_text.annotation.added``.
* one ``image_generation_call`` per image the model draws, opened at its first preview or at
  the image itself (the chat outputs do not say earlier that an image is coming), with the
  image as base64 ``result``, and its ``size``, ``output_format``, ``quality`` and
  ``background`` (always ``opaque``).

An answer with neither text nor images still gets an empty message, so ``output_text`` is "".
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from server.chat.render import annotation
from server.orchestrate import BoxesFound, Finished, Image, Output, Partial, Text
from server.responses.schema import ResponsesRequest
from server.responses.translate import ImagePlan

Event = dict[str, Any]


def item_id(prefix: str) -> str:
    """A fresh output item id (``msg_...``, ``ig_...``)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def usage(totals: Finished) -> dict[str, Any]:
    """The Responses ``usage`` object."""
    return {
        "input_tokens": totals.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": totals.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": totals.prompt_tokens + totals.completion_tokens,
    }


def _format(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text is not None else None
    if fmt is None:
        return {"type": "text"}
    return fmt.model_dump(by_alias=True, exclude_none=True)


def _echo(req: ResponsesRequest) -> dict[str, Any]:
    """The request parameters a Response object repeats."""
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": None,
        "store": req.store,
        "temperature": req.temperature,
        "text": {"format": _format(req), "verbosity": "medium"},
        "tool_choice": req.tool_choice or "auto",
        "tools": [dict(tool) for tool in req.tools or []],
        "top_p": req.top_p,
        "truncation": "disabled",
        "user": req.user,
        "background": False,
    }


@dataclass
class _Message:
    output_index: int
    id: str = field(default_factory=lambda: item_id("msg"))
    text: list[str] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    status: str = "in_progress"

    def part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": "".join(self.text),
            "annotations": list(self.annotations),
            "logprobs": [],
        }

    def item(self) -> dict[str, Any]:
        content = [self.part()] if self.status != "in_progress" or self.text else []
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "status": self.status,
            "content": content,
        }


@dataclass
class _ImageCall:
    output_index: int
    plan: ImagePlan | None
    id: str = field(default_factory=lambda: item_id("ig"))
    status: str = "in_progress"
    result: str | None = None
    size: str | None = None
    output_format: str | None = None

    def item(self) -> dict[str, Any]:
        spec = self.plan.spec if self.plan else None
        return {
            "id": self.id,
            "type": "image_generation_call",
            "status": self.status,
            "result": self.result,
            "action": "generate",
            "background": "opaque",
            "output_format": self.output_format or (spec.output_format if spec else "png"),
            "quality": self.plan.quality if self.plan else "auto",
            "size": self.size or (spec.size if spec else None),
            "revised_prompt": None,
        }


@dataclass
class ResponseBuilder:
    """See the module docstring."""

    response_id: str
    model: str
    request: ResponsesRequest
    images: ImagePlan | None
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "in_progress"
    error: dict[str, Any] | None = None
    _message: _Message | None = None
    _calls: dict[int, _ImageCall] = field(default_factory=dict)
    _count: int = 0
    _totals: Finished | None = None

    def response(self) -> dict[str, Any]:
        """The Response object as it stands."""
        items: list[_Message | _ImageCall] = list(self._calls.values())
        if self._message is not None:
            items.append(self._message)
        reason = None
        if self.status == "incomplete":
            reason = {"reason": "max_output_tokens"}
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if self.status != "in_progress" else None,
            "status": self.status,
            "error": self.error,
            "incomplete_details": reason,
            "model": self.model,
            "output": [i.item() for i in sorted(items, key=lambda i: i.output_index)],
            "usage": usage(self._totals) if self._totals else None,
            **_echo(self.request),
        }

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress``."""
        snapshot = self.response()
        return [
            {"type": "response.created", "response": snapshot},
            {"type": "response.in_progress", "response": snapshot},
        ]

    def feed(self, output: Output) -> list[Event]:
        """The events of one chat output (answer choice 0; the Responses API has one)."""
        if getattr(output, "choice", 0) != 0:
            return []
        if isinstance(output, Text) and output.text:
            events = self._open_message()
            assert self._message is not None
            self._message.text.append(output.text)
            return [*events, self._text_event("response.output_text.delta", delta=output.text)]
        if isinstance(output, BoxesFound):
            return self._boxes(output)
        if isinstance(output, Partial):
            events, call = self._open_call(output.index)
            b64 = base64.b64encode(output.data).decode()
            return [*events, self._partial(call, output.partial_index, b64)]
        if isinstance(output, Image):
            return self._image(output)
        if isinstance(output, Finished):
            return self._finish(output)
        return []

    def fail(self, error: dict[str, Any]) -> None:
        """Mark the response failed with ``error`` (``{"code", "message"}``)."""
        self.status = "failed"
        self.error = error

    def _next_index(self) -> int:
        self._count += 1
        return self._count - 1

    def _open_message(self) -> list[Event]:
        if self._message is not None:
            return []
        self._message = message = _Message(self._next_index())
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            {
                "type": "response.output_item.added",
                "output_index": message.output_index,
                "item": message.item(),
            },
            {
                "type": "response.content_part.added",
                "item_id": message.id,
                "output_index": message.output_index,
                "content_index": 0,
                "part": empty,
            },
        ]

    def _text_event(self, kind: str, **fields: Any) -> Event:
        assert self._message is not None
        return {
            "type": kind,
            "item_id": self._message.id,
            "output_index": self._message.output_index,
            "content_index": 0,
            "logprobs": [],
            **fields,
        }

    def _boxes(self, output: BoxesFound) -> list[Event]:
        events = self._open_message()
        message = self._message
        assert message is not None
        for box in output.boxes:
            note = annotation(box)
            message.annotations.append(note)
            events.append(
                {
                    "type": "response.output_text.annotation.added",
                    "item_id": message.id,
                    "output_index": message.output_index,
                    "content_index": 0,
                    "annotation_index": len(message.annotations) - 1,
                    "annotation": note,
                }
            )
        return events

    def _open_call(self, index: int) -> tuple[list[Event], _ImageCall]:
        call = self._calls.get(index)
        if call is not None:
            return [], call
        self._calls[index] = call = _ImageCall(self._next_index(), self.images)
        where = {"item_id": call.id, "output_index": call.output_index}
        call.status = "generating"
        return [
            {
                "type": "response.output_item.added",
                "output_index": call.output_index,
                "item": {**call.item(), "status": "in_progress"},
            },
            {"type": "response.image_generation_call.in_progress", **where},
            {"type": "response.image_generation_call.generating", **where},
        ], call

    def _partial(self, call: _ImageCall, partial_index: int, b64: str) -> Event:
        item = call.item()
        return {
            "type": "response.image_generation_call.partial_image",
            "item_id": call.id,
            "output_index": call.output_index,
            "partial_image_index": partial_index,
            "partial_image_b64": b64,
            "output_format": item["output_format"],
            "size": item["size"],
            "quality": item["quality"],
            "background": item["background"],
        }

    def _image(self, output: Image) -> list[Event]:
        events, call = self._open_call(output.index)
        call.result = base64.b64encode(output.data).decode()
        call.size = f"{output.width}x{output.height}"
        call.output_format = output.output_format
        call.status = "completed"
        where = {"item_id": call.id, "output_index": call.output_index}
        return [
            *events,
            {"type": "response.image_generation_call.completed", **where},
            {
                "type": "response.output_item.done",
                "output_index": call.output_index,
                "item": call.item(),
            },
        ]

    def _finish(self, totals: Finished) -> list[Event]:
        self._totals = totals
        reasons = totals.finish_reasons
        cut = bool(reasons) and reasons[0] == "length"
        events: list[Event] = []
        if self._message is None and not self._calls:
            events = self._open_message()
        message = self._message
        if message is not None:
            message.status = "incomplete" if cut else "completed"
            part = message.part()
            events += [
                self._text_event("response.output_text.done", text=part["text"]),
                {
                    "type": "response.content_part.done",
                    "item_id": message.id,
                    "output_index": message.output_index,
                    "content_index": 0,
                    "part": part,
                },
                {
                    "type": "response.output_item.done",
                    "output_index": message.output_index,
                    "item": message.item(),
                },
            ]
        self.status = "incomplete" if cut else "completed"
        return events

    def closing_event(self) -> Event:
        """``response.completed`` / ``.incomplete`` / ``.failed`` with the final object."""
        return {"type": f"response.{self.status}", "response": self.response()}
