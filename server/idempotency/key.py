"""The ``Idempotency-Key`` header, whose key it is, and what request it names (pure logic).

A key is the client's name for one request. It is scoped to the API key that sent it (the
SHA-256 of the bearer token, never the token), so two tenants choosing the same key never meet,
and it is bound to a *fingerprint* of the request: method, path and the body in a canonical
form, so that a retry that differs only in how its bytes were laid out is the same request:

- JSON: parsed and dumped with sorted keys and no spaces (a client that re-serialises its
  request in another key order or spacing sends the same request);
- ``multipart/form-data``: the fields and, per uploaded file, its field name, filename, content
  type and the SHA-256 of its bytes, sorted by field name (a retry gets a new random boundary,
  so the raw bytes always differ);
- anything else, or a body that does not parse: the raw bytes (the endpoint refuses it anyway,
  and a refused request does not hold its key: ``server.idempotency.middleware``).

The header follows draft-ietf-httpapi-idempotency-key-header: its value is a Structured Field
string (``"..."``); the bare token form most clients send (Stripe's, OpenAI SDKs') is accepted
too. A key is 1 to 255 visible ASCII characters; anything else, or the header twice, is a 400
naming ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.types import Scope

from server.auth import bearer_token
from workers.errors import InvalidRequest

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

IDEMPOTENT_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
    }
)
"""The POST routes that create work: the only ones whose requests a key names."""


def wants_idempotency(scope: Scope) -> bool:
    """Whether ``scope`` is a request the header applies to (it may still lack the header)."""
    return (
        scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in IDEMPOTENT_PATHS
    )


def idempotency_key(scope: Scope) -> str | None:
    """The request's key, None without the header; InvalidRequest (400) when malformed."""
    values = [v for name, v in scope.get("headers", ()) if name == b"idempotency-key"]
    if not values:
        return None
    if len(values) > 1:
        raise _invalid("send one Idempotency-Key header, not several")
    raw: str = values[0].decode("latin-1").strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':  # the draft's Structured Field string
        raw = raw[1:-1]
    if not 1 <= len(raw) <= MAX_KEY_LENGTH:
        raise _invalid(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters long")
    if not all("!" <= ch <= "~" for ch in raw):
        raise _invalid("Idempotency-Key must be visible ASCII characters (no spaces)")
    return raw


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, param=HEADER)


def tenant_of(scope: Scope) -> str:
    """The hex SHA-256 of the request's API key ("" without one: an open gateway)."""
    token = bearer_token(scope) or ""
    return hashlib.sha256(token.encode()).hexdigest()


def record_digest(tenant: str, key: str) -> str:
    """The name of a key's record: one digest of the tenant and the key (no client text in it)."""
    return hashlib.sha256(f"{tenant}\n{key}".encode()).hexdigest()


def content_type_of(scope: Scope) -> str:
    """The request's media type, lower case, without parameters."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media: str = value.decode("latin-1")
            return media.split(";", 1)[0].strip().lower()
    return ""


def fingerprint(method: str, path: str, body: bytes, form: FormData | None = None) -> str:
    """The hex SHA-256 of ``method``, ``path`` and the canonical body (module docstring).

    ``form``: the parsed ``multipart/form-data`` body, when it is one that parsed.
    """
    canonical = _canonical_form(form) if form is not None else _canonical_json(body)
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def _canonical_json(body: bytes) -> bytes:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return b"raw\n" + body
    return b"json\n" + json.dumps(
        parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8", "surrogatepass")


def _canonical_form(form: FormData) -> bytes:
    items: list[tuple[str, list[Any]]] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            value.file.seek(0)
            sha = hashlib.sha256(value.file.read()).hexdigest()
            value.file.seek(0)
            items.append((name, ["file", value.filename, value.content_type, sha]))
        else:
            items.append((name, ["field", value]))
    items.sort(key=lambda item: item[0])  # stable: repeated fields keep their order
    return b"form\n" + json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
