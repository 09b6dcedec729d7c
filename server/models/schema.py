"""Response models of ``GET /v1/models`` (OpenAI's ``Model`` and list, plus SEED-X fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from workers.keys import Stage


class ModelCard(BaseModel):
    """One served model. ``stage``, ``workers``, ``endpoints`` and ``demo`` are SEED-X additions
    (OpenAI's clients keep extra fields of a ``Model``)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When its oldest live worker started (epoch seconds).")
    owned_by: str = "seedx"
    stage: Stage = Field(description="llm (chat, generations, edits) or diffusion (variations).")
    workers: int = Field(description="Live workers serving it.")
    endpoints: list[str] = Field(
        description="The endpoints that serve it, e.g. /v1/chat/completions; another endpoint "
        "answers 400 naming these."
    )
    demo: bool = Field(
        default=False,
        description="True when it is the tiny demo of seedx serve: random weights, so text is "
        "gibberish and images are noise (the gateway's demo setting).",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
