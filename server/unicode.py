"""Text the gateway accepts is valid Unicode: a JSON body with a lone surrogate is a 400.

JSON can spell a UTF-16 surrogate half on its own (``"\\ud83d"``), and Python's decoder (and
``json.loads`` on bytes, which decodes with ``surrogatepass``) turns it into a ``str`` that no
UTF-8 encoder accepts. Such a string passed every request model and then failed where it was
first encoded, deep in the request (a wire message, a stored response, a log line): a 500 for
the client's mistake (issue 21, item 2). The check therefore sits where every JSON body enters:
the route class of every router that takes one, once for all fields of all its endpoints; it
names the field like any validation error (``messages[0].content``). Multipart forms and query
strings cannot carry a surrogate: Starlette decodes their bytes as UTF-8 (or latin-1), never
with ``surrogatepass``.

The scan costs nothing for the bodies that cannot hold one: only a body with a ``\\uD8..``-
``\\uDF..`` escape or the UTF-8 bytes of a surrogate (``ED A0``..``ED BF``) is walked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")

Path = tuple[str | int, ...]


def _is_valid(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (``\\ud83d``): what an error
    may echo back (the raw string would fail the error's own encoding: a 500)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def invalid_text_at(value: Any, path: Path = ()) -> Path | None:
    """The path of the first string (key or value) in ``value`` that is not valid Unicode; a
    key on the path that is itself invalid is given :func:`printable`."""
    if isinstance(value, str):
        return None if _is_valid(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not _is_valid(key):
                return (*path, printable(key))
            found = invalid_text_at(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = invalid_text_at(item, (*path, index))
            if found is not None:
                return found
    return None


async def check_json_text(request: Request) -> None:
    """Raise a validation error (400 naming the field) for a JSON body holding a lone surrogate."""
    body = await request.body()  # cached on the request: the endpoint reads the same bytes
    if not _MAYBE_SURROGATE.search(body):
        return
    try:
        data = await request.json()
    except ValueError:
        return  # not JSON: the route's own parsing answers that
    path = invalid_text_at(data)
    if path is None:
        return
    raise RequestValidationError(
        [
            {
                "type": "string_unicode",
                "loc": ("body", *path),
                "msg": "text must be valid Unicode: it holds a lone UTF-16 surrogate",
                "input": None,
            }
        ],
        body=data,
    )


class UnicodeCheckedRoute(APIRoute):
    """An API route whose JSON body must be valid Unicode (every router of the gateway)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            await check_json_text(request)
            return await handler(request)

        return checked
