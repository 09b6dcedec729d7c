"""``Idempotency-Key`` on the POST routes that create work: one place, in front of every endpoint.

A client that sends the header and retries (its connection dropped, its timeout fired) gets the
answer of its first request, and no second job starts: not a second LLM job, not a second image
(``n=2`` images, a chat that draws, every job of the request). How:

1. The key is checked (400 naming ``Idempotency-Key``), the body read whole and fingerprinted
   (:mod:`server.idempotency.key`), and the key claimed in Redis
   (:mod:`server.idempotency.records`).
2. The request that claims the key is run by the gateway *detached from its client*: the app
   answers into the key's answer stream, and keeps running if the client goes away (the key
   says a retry will come for the answer; without a key a client that leaves still cancels its
   jobs). Its deadline (``chat_timeout_s``, ``image_timeout_s``) bounds it as usual.
3. Every client of the key, the first included, is answered from that stream from its start:
   one path, so a retry that arrives while the first request runs *joins* it (the same SSE
   events from the first, then the rest as they come; or the same final JSON) and one that
   arrives after it finished gets the same answer (same ids, same content, same
   ``X-Request-ID``), for ``idempotency_ttl_s``.

Statuses, following draft-ietf-httpapi-idempotency-key-header:

- the same key with a different request (body, endpoint) of the same API key: **422**
  ``idempotency_key_reused`` (the draft's status for a reused key), before any work;
- a retry while the first request still runs: *not* the draft's 409. The draft allows a server
  that cannot tell the outcome yet to refuse; this gateway can answer the retry with the very
  answer the first request is producing, which is what a retrying client wants, and refusing
  would make it poll;
- a malformed key: 400.

What a key keeps: an answer with a success status (2xx; a stream that later carried an error
frame included: that answer was given, and is given again). An error status (a 400 for a bad
body, a 429 or 503 at admission, a 5xx after a job failed) frees the key at once: no job of that
request is still running then, so a retry with the same key runs anew rather than repeating a
failure forever, and a mistake in a request does not poison its key. After ``idempotency_ttl_s``
the key is forgotten and the same key runs anew: the draft leaves the expiry to the server, and
keeping answers longer would mean keeping their bytes in Redis longer. Keys are per API key (its
SHA-256, never the key itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import (
    IdempotencyKeyReused,
    error_body,
    error_frame,
    error_response,
    http_error_response,
)
from server.idempotency.key import (
    HEADER,
    content_type_of,
    fingerprint,
    idempotency_key,
    record_digest,
    tenant_of,
    wants_idempotency,
)
from server.idempotency.records import BODY, START, Record, RequestRecords, start_entry
from server.metrics import IDEMPOTENT_REQUESTS, IdempotentOutcome, reject, request_id_of
from server.sse import wait_for_disconnect
from workers.errors import InvalidRequest, StoreFull, TransportError, Unavailable

logger = logging.getLogger(__name__)


class IdempotentRuns:
    """The detached runs of the keys this gateway claimed (cancelled at shutdown)."""

    def __init__(self, records: RequestRecords) -> None:
        self.records = records
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, app: ASGIApp, scope: Scope, body: list[Message], digest: str, record: Record
    ) -> None:
        """Run ``app`` on the request, its answer going to ``record``'s stream."""
        task = asyncio.get_running_loop().create_task(self._run(app, scope, body, digest, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, app: ASGIApp, scope: Scope, body: list[Message], digest: str, record: Record
    ) -> None:
        keeping = asyncio.get_running_loop().create_task(self._keep_claim(digest, record))
        try:
            await self._record_answer(app, scope, body, digest, record)
        finally:  # cancelled at shutdown too: the claim then lapses after its lease
            keeping.cancel()
            self.records.stop_writing(digest, record)

    async def _record_answer(
        self, app: ASGIApp, scope: Scope, body: list[Message], digest: str, record: Record
    ) -> None:
        """Run ``app`` with its answer going to the record's stream, then end the stream and
        keep the record (a success) or free the key (an error status, or an answer cut short)."""
        records = self.records
        status: int | None = None
        own_id = (b"x-request-id", request_id_of(scope).encode())

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append(own_id)  # a replay names the request that made the answer
                records.append(digest, record, START, start_entry(status, headers))
            elif message["type"] == "http.response.body" and message.get("body"):
                records.append(digest, record, BODY, message["body"])

        end = "ok"
        try:
            await app(scope, _replaying(body), send)
        except Exception:
            logger.exception("unhandled error on %s (Idempotency-Key run)", scope["path"])
            if status is None:
                with contextlib.suppress(TransportError):
                    failed = error_body("internal error", "server_error", "internal_error")
                    await JSONResponse(failed, status_code=500)(scope, _replaying([]), send)
            end = "broken"
        if status is None or status >= 400:
            end = "error"
        try:
            await records.finish(digest, record, end, keep=end == "ok")
        except TransportError as exc:  # the claim lapses after its lease; followers are told
            logger.warning("could not record the end of an Idempotency-Key answer: %s", exc)

    async def _keep_claim(self, digest: str, record: Record) -> None:
        while True:
            await asyncio.sleep(self.records.lease_s / 3)
            try:
                await self.records.renew(digest, record)
            except TransportError as exc:
                logger.warning("could not renew an Idempotency-Key claim: %s", exc)

    async def close(self) -> None:
        """Cancel the runs still going (at shutdown; their requests' scopes cancel their jobs)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class IdempotencyMiddleware:
    """Answers requests that carry ``Idempotency-Key`` from their key's record (module
    docstring); passes every other request through untouched."""

    def __init__(self, app: ASGIApp, runs: IdempotentRuns, retry_after_s: int = 1) -> None:
        self.app = app
        self.runs = runs
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not wants_idempotency(scope):
            await self.app(scope, receive, send)
            return
        try:
            key = idempotency_key(scope)
        except InvalidRequest as exc:
            await error_response(exc)(scope, receive, send)
            return
        if key is None:
            await self.app(scope, receive, send)
            return
        _match_route(scope)  # the metrics' route label, for answers the router never sees
        try:
            body = await _read_body(receive)
        except StarletteHTTPException as exc:  # the body limit's 413 / 408
            await http_error_response(scope, exc)(scope, receive, send)
            return
        if body is None:
            return  # the client left while sending its body
        digest = record_digest(tenant_of(scope), key)
        try:
            request_fingerprint = await _fingerprint(scope, body)
            record, claimed = await self.runs.records.claim(digest, request_fingerprint)
        except TransportError as exc:
            reject(scope, "store_full" if isinstance(exc, StoreFull) else "unavailable")
            await error_response(exc, self.retry_after_s)(scope, receive, send)
            return
        outcome: IdempotentOutcome
        if claimed:
            outcome = "started"
            self.runs.start(self.app, dict(scope), body, digest, record)
        elif record.fingerprint != request_fingerprint:
            outcome = "conflict"
        else:
            outcome = "replayed" if record.done else "joined"
        IDEMPOTENT_REQUESTS.labels(scope["path"], outcome).inc()
        if outcome == "conflict":
            error = IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request (another body or "
                "endpoint); use a new key for a new request",
                param=HEADER,
            )
            await error_response(error)(scope, receive, send)
            return
        await self._answer(scope, receive, send, digest, record)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, digest: str, record: Record
    ) -> None:
        """Relay the attempt's recorded answer until its end, or until the client leaves."""
        relay = asyncio.ensure_future(self._relay(scope, receive, send, digest, record))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watcher):
                task.cancel()
            await asyncio.gather(relay, watcher, return_exceptions=True)

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, digest: str, record: Record
    ) -> None:
        started = streamed = False
        try:
            async for entry in self.runs.records.follow(digest, record):
                message = entry.message
                if message is None:
                    break
                if message["type"] == "http.response.start":
                    started = True
                    streamed = _is_event_stream(message)
                await send(message)
        except TransportError as exc:
            logger.warning("answer of an Idempotency-Key cut short: %s", exc)
            if not started:
                await error_response(exc, self.retry_after_s)(scope, receive, send)
                return
            if streamed:
                frame = error_frame(exc)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        except OSError:
            return  # the client is gone
        if not started:  # an end without an answer: never written by a run
            lost = Unavailable("the request this Idempotency-Key names left no answer; retry")
            await error_response(lost, self.retry_after_s)(scope, receive, send)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(receive: Receive) -> list[Message] | None:
    """The body's messages, read whole (the body limit bounds them), or None on disconnect."""
    messages: list[Message] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        messages.append(message)
        if not message.get("more_body", False):
            return messages


def _replaying(messages: list[Message]) -> Receive:
    """A ``receive`` that gives ``messages``, then never reports a disconnect: a detached run
    has no client to lose."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        never: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        return await never

    return receive


async def _fingerprint(scope: Scope, body: list[Message]) -> str:
    data = b"".join(message.get("body", b"") for message in body)
    form: FormData | None = None
    if content_type_of(scope) == "multipart/form-data":
        with contextlib.suppress(Exception):  # an unparsable form: its raw bytes then
            form = await Request(dict(scope), _replaying(body)).form()
    try:
        return fingerprint(scope["method"], scope["path"], data, form)
    finally:
        if form is not None:
            await form.close()


def _match_route(scope: Scope) -> None:
    """Set the route the router would match (``scope["route"]``), for the request metrics."""
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, child = route.matches(scope)
        if match is Match.FULL:
            scope.update(child)
            return


def _is_event_stream(start: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in start.get("headers", ())
    )
