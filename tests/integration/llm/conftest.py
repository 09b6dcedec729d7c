"""One SEED-X vLLM engine (tiny seed-x-i, fp32, CPU) shared by the whole session.

vLLM's engine start takes ~15 s on two cores, so every LLM integration test shares this one;
tests must give each request a unique ``request_id``. The PyTorch reference of the same folder
is the parity oracle (``engine.reference``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

T = TypeVar("T")


class EngineThread:
    """Runs the engine's event loop in a thread so sync and async tests can both use it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


@pytest.fixture(scope="session")
def llm_folder(serving_tree: Path) -> Path:
    return serving_tree / "seed-x-i"


@pytest.fixture(scope="session")
def engine_loop() -> Iterator[EngineThread]:
    loop = EngineThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="session")
def llm_engine(llm_folder: Path, engine_loop: EngineThread) -> Iterator[Any]:
    from workers.llm.engine import EngineConfig, SeedXLLMEngine

    config = EngineConfig(
        llm_folder,
        dtype="float32",
        enforce_eager=True,
        kv_cache_bytes=256 << 20,
        enable_mm_embeds=True,
    )
    engine = engine_loop.run(SeedXLLMEngine.start(config), timeout=300)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def reference(serving_tree: Path) -> Any:
    from engine.runner import load_reference

    return load_reference(serving_tree, "seed-x-i", torch.float32, "cpu")
