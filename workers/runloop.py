"""How worker processes run their event loop: uvloop when it is installed, asyncio otherwise.

A worker's loop relays every token of every job (a Redis write per event) and wakes for every
job delivery, so its per-callback overhead sits on the path of time-to-first-token; libuv's loop
(the one uvicorn already gives the gateway) cuts it. vLLM's ``AsyncLLM`` and the diffusion
worker's threads run unchanged on it (vLLM's own API server runs on uvloop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop's event loop when available."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows, or a minimal install: the standard loop works the same
        return asyncio.run(main)
    return uvloop.run(main)
