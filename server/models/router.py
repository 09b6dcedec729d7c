"""HTTP of ``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from server.deps import GatewayDep
from server.errors import ModelNotFound
from server.models.schema import ModelCard, ModelList
from server.models.service import list_models
from server.openapi import ERROR_RESPONSES

router = APIRouter(tags=["models"])


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def get_models(gateway: GatewayDep) -> ModelList:
    """The models some live worker serves now."""
    return await list_models(gateway.directory, demo=gateway.settings.demo)


@router.get("/v1/models/{model}", responses=ERROR_RESPONSES)
async def get_model(model: Annotated[str, Path(max_length=128)], gateway: GatewayDep) -> ModelCard:
    """One served model; 404 ``model_not_found`` when no live worker serves it."""
    for card in (await list_models(gateway.directory, demo=gateway.settings.demo)).data:
        if card.id == model:
            return card
    if gateway.directory.known_stages(model):
        raise ModelNotFound(
            f"the model {model!r} has no live worker now (it is loading or restarting; "
            f"GET /readyz?model={model} says when it is ready)",
            param="model",
        )
    raise ModelNotFound(f"the model {model!r} does not exist", param="model")
