"""``Idempotency-Key`` parsing and request fingerprints (pure logic: ``server.idempotency.key``)."""

from __future__ import annotations

import httpx
import pytest
from starlette.datastructures import FormData
from starlette.requests import Request

from server.idempotency.key import (
    fingerprint,
    idempotency_key,
    record_digest,
    tenant_of,
    wants_idempotency,
)
from workers.errors import InvalidRequest


def scope(*headers: tuple[bytes, bytes], path: str = "/v1/chat/completions") -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": path, "headers": list(headers)}


def test_the_key_is_read_bare_or_as_a_structured_field_string() -> None:
    assert idempotency_key(scope()) is None
    assert idempotency_key(scope((b"idempotency-key", b"abc-1"))) == "abc-1"
    assert idempotency_key(scope((b"idempotency-key", b'"abc-1"'))) == "abc-1"


@pytest.mark.parametrize("value", [b"", b'""', b"a" * 256, b"a b", b"caf\xe9", b"tab\there"])
def test_a_malformed_key_is_refused_naming_the_header(value: bytes) -> None:
    with pytest.raises(InvalidRequest) as refused:
        idempotency_key(scope((b"idempotency-key", value)))
    assert refused.value.param == "Idempotency-Key"


def test_two_headers_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        idempotency_key(scope((b"idempotency-key", b"a"), (b"idempotency-key", b"b")))


def test_only_posts_that_create_work_take_the_header() -> None:
    assert wants_idempotency(scope(path="/v1/images/edits"))
    assert not wants_idempotency(scope(path="/v1/models"))
    assert not wants_idempotency({**scope(), "method": "GET"})


def test_records_are_per_api_key() -> None:
    alice = tenant_of(scope((b"authorization", b"Bearer alice-key")))
    bob = tenant_of(scope((b"authorization", b"Bearer bob-key-1")))
    assert alice != bob
    assert "alice-key" not in alice
    assert record_digest(alice, "k") != record_digest(bob, "k")


def test_json_is_fingerprinted_canonically() -> None:
    one = fingerprint("POST", "/v1/responses", b'{"model": "m", "input": [1, 2.5]}')
    two = fingerprint("POST", "/v1/responses", b'{"input":[1,2.5],"model":"m"}')
    assert one == two
    assert one != fingerprint("POST", "/v1/responses", b'{"input":[2.5,1],"model":"m"}')
    assert one != fingerprint("POST", "/v1/chat/completions", b'{"input":[1,2.5],"model":"m"}')
    assert fingerprint("POST", "/p", b"{not json") != fingerprint("POST", "/p", b"{not json!")


async def _form(fields: dict[str, str], image: bytes) -> FormData:
    """The form starlette parses from an httpx multipart body (a fresh random boundary)."""
    built = httpx.Request("POST", "http://g/", data=fields, files={"image": ("a.png", image)})
    body = built.read()
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(k.lower().encode(), v.encode()) for k, v in built.headers.items()]
    return await Request({"type": "http", "method": "POST", "headers": headers}, receive).form()


async def test_multipart_is_fingerprinted_by_fields_and_file_bytes_not_boundary() -> None:
    one = await _form({"prompt": "p", "n": "2"}, b"\x89PNG-1")
    two = await _form({"n": "2", "prompt": "p"}, b"\x89PNG-1")
    other = await _form({"prompt": "p", "n": "2"}, b"\x89PNG-2")
    path = "/v1/images/edits"
    assert fingerprint("POST", path, b"x", one) == fingerprint("POST", path, b"y", two)
    assert fingerprint("POST", path, b"x", one) != fingerprint("POST", path, b"x", other)
    for form in (one, two, other):
        await form.close()
