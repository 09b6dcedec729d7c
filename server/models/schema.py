"""Response models of ``GET /v1/models`` (OpenAI's ``Model`` and list, plus SEED-X fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from workers.keys import Stage


class ModelCard(BaseModel):
    """One served model. ``stage`` and ``workers`` are SEED-X additions."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When its oldest live worker started (epoch seconds).")
    owned_by: str = "seedx"
    stage: Stage = Field(description="llm (chat, generations, edits) or diffusion (variations).")
    workers: int = Field(description="Live workers serving it.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
