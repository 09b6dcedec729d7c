"""``/v1/responses``: a Responses request runs as a chat request (:mod:`.translate`).

:func:`prepare` does everything that can refuse the request before a job is queued: the
parameter checks, the previous response (400 ``previous_response_not_found``, as OpenAI
answers), the translation. :func:`run_response` then runs
:func:`server.chat.service.run_chat` — the same validation, admission, image loading and
orchestration as chat completions — and renames the parameter of any error it raises to this
request's own field. :func:`remember` stores the finished response when ``store`` is true.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.chat.service import Accepted, run_chat
from server.errors import PreviousResponseNotFound
from server.orchestrate import Output
from server.responses.schema import ResponsesRequest
from server.responses.store import ResponseStore, StoredResponse, new_response_id
from server.responses.translate import Translation, translate
from server.state import Gateway
from workers.errors import TransportError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A checked request: its id, its chat translation and the store it goes to."""

    response_id: str
    request: ResponsesRequest
    translation: Translation
    store: ResponseStore


async def prepare(gateway: Gateway, store: ResponseStore, req: ResponsesRequest) -> Prepared:
    """Check ``req`` and resolve ``previous_response_id``; 400 naming the parameter."""
    req.check_supported()
    previous = None
    if req.previous_response_id is not None:
        previous = await store.load(req.previous_response_id)
        if previous is None:
            raise PreviousResponseNotFound(
                f"Previous response with id {req.previous_response_id!r} not found.",
                param="previous_response_id",
            )
    translation = translate(gateway.settings, req, previous)
    return Prepared(new_response_id(), req, translation, store)


def _renamed(exc: TransportError, translation: Translation) -> TransportError:
    """``exc`` naming this request's parameter, in ``param`` and in its message alike."""
    renamed = translation.param_of(exc.param)
    if exc.param and renamed and renamed != exc.param:
        exc.message = re.sub(rf"(?<![\w.\[]){re.escape(exc.param)}(?![\w\[])", renamed, exc.message)
    exc.param = renamed
    return exc


async def run_response(
    gateway: Gateway, prepared: Prepared, request_id: str
) -> AsyncIterator[Accepted | Output]:
    """The chat path's :class:`Accepted` and outputs, errors naming this request's fields."""
    translation = prepared.translation
    plan = translation.images
    outputs: AsyncGenerator[Accepted | Output] = run_chat(  # type: ignore[assignment]
        gateway,
        translation.chat,
        request_id,
        partial_images=plan.spec.partial_images if plan else 0,
    )
    try:
        async for output in outputs:
            yield output
    except TransportError as exc:
        raise _renamed(exc, translation) from None
    finally:
        await outputs.aclose()


async def remember(prepared: Prepared, response: dict[str, Any]) -> None:
    """Store ``response`` and its conversation when the request asked for it (``store``)."""
    if not prepared.request.store:
        return
    record = StoredResponse(response, prepared.translation.conversation)
    await prepared.store.save(record)
    logger.info("stored response %s (%s)", response["id"], response["status"])
