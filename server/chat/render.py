"""Chat answers in OpenAI's shapes: ``chat.completion`` and ``chat.completion.chunk``.

SEED-X additions, chosen so that unmodified OpenAI clients keep working:

* **Images** in a non-streamed answer make ``message.content`` a list of parts,
  ``[{"type": "text", ...}, {"type": "image_url", "image_url": {"url": ...}}, ...]`` — the same
  parts a request accepts, so the assistant turn can be sent back unchanged. In a stream,
  ``delta.content`` stays a string (clients concatenate it); each finished image comes as one
  chunk with ``delta.images = [{"index": k, "type": "image_url", "image_url": {"url": ...}}]``
  (``index`` lets the openai client's stream helpers accumulate the list; requests accept the
  accumulated ``images`` list on an assistant message, too).
* **Logprobs** are OpenAI's ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``,
  one entry per sampled token that renders (image blocks and EOS are not content), raw as vLLM
  returns them (before temperature, logit_bias, the JSON grammar and SEED-X's image-token rules);
  in a stream each chunk carries the entries of the tokens its text came from.
* **Boxes** are ``message.annotations`` (``delta.annotations`` in a stream, with ``index``):
  ``{"type": "bounding_box", "bounding_box": {"x1", "y1", "x2", "y2", "image_index", "label"}}``,
  pixel coordinates in the original size of input image ``image_index`` (0-based, counting the
  request's images in order). The text keeps the box markup the model wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.orchestrate import Finished
from server.sse import data_frame
from workers.protocol import Box, TokenLogprob


def annotation(box: Box) -> dict[str, Any]:
    """The annotation of one box."""
    return {
        "type": "bounding_box",
        "bounding_box": {
            "x1": box.x1,
            "y1": box.y1,
            "x2": box.x2,
            "y2": box.y2,
            "image_index": box.image_index,
            "label": box.label,
        },
    }


def image_part(url: str) -> dict[str, Any]:
    """An ``image_url`` content part."""
    return {"type": "image_url", "image_url": {"url": url}}


def usage(totals: Finished) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "total_tokens": totals.prompt_tokens + totals.completion_tokens,
    }


def finish_reason(totals: Finished, choice: int) -> str:
    """The finish reason of ``choice`` (``stop`` when the worker reported none)."""
    reasons = totals.finish_reasons
    return reasons[choice] if choice < len(reasons) else "stop"


def logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object of a choice (or of one chunk's tokens)."""
    return {"content": [entry.model_dump() for entry in entries], "refusal": None}


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    text: list[str] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    images: dict[int, str] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None  # set when the request asked for logprobs


def completion(
    completion_id: str,
    created: int,
    model: str,
    choices: list[ChoiceState],
    totals: Finished,
) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished, non-streamed answer."""
    rendered = []
    for index, state in enumerate(choices):
        text = "".join(state.text)
        content: str | list[dict[str, Any]] = text
        if state.images:
            content = [{"type": "text", "text": text}] if text else []
            content += [image_part(state.images[k]) for k in sorted(state.images)]
        rendered.append(
            {
                "index": index,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": state.annotations,
                },
                "logprobs": None if state.logprobs is None else logprobs(state.logprobs),
                "finish_reason": finish_reason(totals, index),
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": rendered,
        "usage": usage(totals),
        "system_fingerprint": None,
    }


@dataclass
class ChunkWriter:
    """Builds the SSE frames of one streamed answer."""

    completion_id: str
    created: int
    model: str
    include_usage: bool
    _counts: dict[tuple[str, int], int] = field(default_factory=dict)

    def _frame(self, choices: list[dict[str, Any]], usage_: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": None,
        }
        if self.include_usage:
            chunk["usage"] = usage_
        return data_frame(chunk)

    def _delta(
        self,
        choice: int,
        delta: dict[str, Any],
        reason: str | None = None,
        entries: tuple[TokenLogprob, ...] | None = None,
    ) -> bytes:
        rendered = None if entries is None else logprobs(entries)
        return self._frame(
            [{"index": choice, "delta": delta, "logprobs": rendered, "finish_reason": reason}]
        )

    def _next(self, kind: str, choice: int) -> int:
        index = self._counts.get((kind, choice), 0)
        self._counts[(kind, choice)] = index + 1
        return index

    def role(self, choice: int) -> bytes:
        """The first chunk of a choice."""
        return self._delta(choice, {"role": "assistant", "content": ""})

    def text(
        self, choice: int, text: str, entries: tuple[TokenLogprob, ...] | None = None
    ) -> bytes:
        return self._delta(choice, {"content": text}, entries=entries)

    def boxes(self, choice: int, boxes: tuple[Box, ...]) -> bytes:
        entries = [{"index": self._next("box", choice), **annotation(box)} for box in boxes]
        return self._delta(choice, {"annotations": entries})

    def image(self, choice: int, url: str) -> bytes:
        entry = {"index": self._next("image", choice), **image_part(url)}
        return self._delta(choice, {"images": [entry]})

    def finish(self, choice: int, reason: str) -> bytes:
        return self._delta(choice, {}, reason)

    def usage(self, totals: Finished) -> bytes:
        """The last chunk when ``include_usage``: no choices, the totals."""
        return self._frame([], usage(totals))
