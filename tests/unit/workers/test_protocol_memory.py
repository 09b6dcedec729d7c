"""Decoding messages keeps nothing: ids and text are not cached (the soak's growth, issue 9).

pydantic-core caches the strings it decodes from JSON in a 16k-entry cache unless told to cache
keys only; every message carries fresh ids, so a cache of values fills over the first ~2,000
requests of a gateway or worker and reads as a leak.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.protocol import Undecodable, new_id, parse_job, parse_reply

GOLDEN = Path(__file__).resolve().parents[3] / "workers" / "golden"


def _growth(parse: Callable[[str], Any], template: dict[str, Any], count: int) -> int:
    def fresh() -> str:
        return json.dumps({**template, "job_id": new_id(), "request_id": new_id(),
                           "trace_id": new_id()})  # fmt: skip

    assert not isinstance(parse(fresh()), Undecodable)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            parse(fresh())
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("golden", "parse"),
    [
        ("v1_reply_text_delta.json", parse_reply),
        ("v1_chat_job.json", parse_job),
        ("v1_image_generate_job.json", parse_job),
    ],
)
def test_decoding_fresh_ids_keeps_no_memory(golden: str, parse: Callable[[str], Any]) -> None:
    template = json.loads((GOLDEN / golden).read_text())
    # 3,000 messages x 3 ids: a value cache would keep ~9,000 strings (~600 KB).
    assert _growth(parse, template, 3000) < 32 * 1024
