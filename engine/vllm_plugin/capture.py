"""Capturing the 64 image-query rows inside the generation engine (issue 4, "C3" done carefully).

vLLM 0.32 has no request option that returns prompt hidden states from a generation engine, so
a vLLM *worker extension* (the public ``worker_extension_cls`` engine argument, mixed into the
worker class) adds methods that the driver calls with ``collective_rpc``:

* :meth:`SeedXWorkerExtension.seedx_install_capture` wraps the model runner's ``_model_forward``
  (documented there as the override point for model execution) on this runner instance. The
  wrapper runs *outside* any CUDA graph or compiled region, right after the forward, on the
  model's output, which is the final-norm hidden state of every scheduled token (§5.2 step 3).
* For each scheduled request whose ``SamplingParams.extra_args[CAPTURE_KEY]`` asks for it, the
  rows at absolute positions ``start .. start+63`` that this step computed are copied into a
  :class:`QueryRowStore` entry under the request's *content key*. Positions come from the
  runner's ``query_start_loc`` and ``num_computed_tokens``, so chunked prefill fills an entry
  over several steps, and concurrent requests never share an entry unless their token content
  (and therefore their rows) is identical.
* :meth:`SeedXWorkerExtension.seedx_take_images` returns the completed rows and runs the output
  resampler on them in the engine process (the model's own weights: one copy).

Prefix caching: a query position served from the prefix cache is not recomputed, so no row
arrives for it. The content key (a hash of every token id and image up to the block, chosen by
the driver) makes such hits harmless: the request that computed those positions first stored
them under the same key. Entries live in a bounded LRU; if one was evicted while vLLM still held
its KV blocks, :meth:`seedx_take_images` reports it missing and the driver recomputes the rows
with ``skip_reading_prefix_cache=True``.

Tensor parallelism: every vLLM worker (one per TP rank, each a copy of this extension) runs the
same forward, and after the all-reduce of the last row-parallel layer every rank holds the same
full final-norm hidden state, so the rows are read **once**, by the *reading rank*: TP rank 0 of
the last pipeline stage (the only stage whose output is the hidden state). Only that rank keeps
rows and answers :meth:`~SeedXWorkerExtension.seedx_take_images` with a list (and runs the output
resampler); the others answer ``None``, and the driver takes the single list with
:func:`reader_answer`, which refuses zero or several. ``every_rank=True`` (tests) makes every
rank keep its rows, and :meth:`~SeedXWorkerExtension.seedx_row_digests` shows they agree.

What leans on vLLM internals: ``_model_forward`` (called with keyword ``positions``),
``input_batch.req_ids``, ``query_start_loc.np`` and ``requests[id].sampling_params``
of the v1 GPU/CPU model runner; ``tests/integration/llm`` pins the behaviour.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.arch import NUM_QUERY_TOKENS

logger = logging.getLogger(__name__)

CAPTURE_KEY = "seedx_capture"


def capture_args(key: str, start: int) -> dict[str, Any]:
    """``extra_args`` entry asking for the rows at positions ``start .. start + 63``."""
    if start < 0:
        raise ValueError(f"capture start must be >= 0, got {start}")
    return {CAPTURE_KEY: {"key": key, "start": start}}


@dataclass
class _Entry:
    rows: torch.Tensor  # [64, hidden] on CPU
    filled: torch.Tensor = field(init=False)  # [64] bool

    def __post_init__(self) -> None:
        self.filled = torch.zeros(self.rows.shape[0], dtype=torch.bool)

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())


class QueryRowStore:
    """Rows by content key, bounded LRU; fed from the forward, read by RPC."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, start: int, first_pos: int, rows: torch.Tensor) -> None:
        """Records ``rows`` (states of positions ``first_pos ..``) that fall in the block."""
        lo = max(start, first_pos)
        hi = min(start + NUM_QUERY_TOKENS, first_pos + rows.shape[0])
        if lo >= hi:
            return
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(torch.empty(NUM_QUERY_TOKENS, rows.shape[1], dtype=rows.dtype))
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        entry.rows[lo - start : hi - start] = rows[lo - first_pos : hi - first_pos].to("cpu")
        entry.filled[lo - start : hi - start] = True

    def keys(self) -> list[str]:
        """Every key held, least recently used first."""
        return list(self._entries)

    def get(self, key: str) -> torch.Tensor | None:
        """The complete ``[64, hidden]`` rows of ``key``, or None (never or partly computed)."""
        entry = self._entries.get(key)
        if entry is None or not entry.complete:
            return None
        self._entries.move_to_end(key)
        return entry.rows

    def capture(self, runner: Any, hidden: torch.Tensor, positions: torch.Tensor) -> None:
        """Copies the wanted rows of one forward step (``hidden``: ``[tokens, H]``).

        A request's first position is read from the forward's own ``positions``: the runner's
        ``num_computed_tokens_cpu`` lags behind by a step under async scheduling.
        """
        batch = runner.input_batch
        starts = runner.query_start_loc.np
        for i, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            spec = (getattr(params, "extra_args", None) or {}).get(CAPTURE_KEY)
            if spec is None:
                continue
            lo, hi = int(starts[i]), int(starts[i + 1])
            if hi <= lo:
                continue
            first_pos = int(positions[lo])
            if first_pos >= spec["start"] + NUM_QUERY_TOKENS:
                continue  # decoding past the block
            self.put(spec["key"], int(spec["start"]), first_pos, hidden[lo:hi].detach())


def _hidden_of(output: Any) -> torch.Tensor | None:
    """The final-norm states in a model output, or None (not the last pipeline rank)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]  # (hidden, aux_hidden) with EAGLE-3 drafting
    return None


def is_row_reader() -> bool:
    """Whether this vLLM worker reads the rows: TP rank 0 of the last pipeline stage."""
    from vllm.distributed import get_pp_group, get_tp_group

    return bool(get_tp_group().rank_in_group == 0 and get_pp_group().is_last_rank)


def reader_answer(results: list[Any]) -> list[Any]:
    """The reading rank's answer among a ``collective_rpc`` result list (one entry per worker,
    in rank order), where every other rank answered ``None``."""
    answers = [r for r in results if r is not None]
    if len(answers) != 1:
        raise RuntimeError(
            f"expected one vLLM worker to read the image-query rows, {len(answers)} of "
            f"{len(results)} answered"
        )
    return answers[0]  # type: ignore[no-any-return]


class SeedXWorkerExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); methods run via ``collective_rpc``."""

    model_runner: Any  # provided by the vLLM worker this class is mixed into

    def seedx_install_capture(self, max_entries: int = 256, every_rank: bool = False) -> bool:
        """Wraps this worker's ``_model_forward`` once; returns True when newly installed.

        Rows are kept on the reading rank only (:func:`is_row_reader`), or on every rank that
        sees the final hidden state when ``every_rank`` (to compare the ranks).
        """
        runner = self.model_runner
        if getattr(runner, "_seedx_rows", None) is not None:
            return False
        store = QueryRowStore(max_entries)
        reader = is_row_reader()
        keeps = reader or every_rank
        forward = runner._model_forward

        def forward_and_capture(*args: Any, **kwargs: Any) -> Any:
            output = forward(*args, **kwargs)
            if keeps:
                hidden = _hidden_of(output)
                positions = kwargs.get("positions")
                if hidden is not None and positions is not None and positions.ndim == 1:
                    store.capture(runner, hidden, positions)
            return output

        runner._model_forward = forward_and_capture
        runner._seedx_rows = store
        runner._seedx_reader = reader
        if reader:
            logger.info("SEED-X query-row capture installed (LRU of %d blocks)", max_entries)
        return True

    def _seedx_store(self) -> QueryRowStore:
        store: QueryRowStore | None = getattr(self.model_runner, "_seedx_rows", None)
        if store is None:
            raise RuntimeError("seedx_install_capture was not called on this engine")
        return store

    @torch.no_grad()
    def seedx_take_images(self, keys: list[str]) -> list[dict[str, Any] | None] | None:
        """On the reading rank, for each key: the rows ``[64, H]`` and visual embedding
        ``[64, D]``, or None (not captured); on every other rank None (see module doc).

        Tensors travel as :func:`pack_tensor` dicts: the engine-core RPC path serialises return
        values generically and turns bare tensors into nested lists.
        """
        store = self._seedx_store()
        if not self.model_runner._seedx_reader:
            return None
        found = [store.get(key) for key in keys]
        complete = [rows for rows in found if rows is not None]
        if not complete:
            return [None] * len(keys)
        model = self.model_runner.get_model()
        device = next(model.parameters()).device
        embeds = iter(model.visual_embedding(torch.stack(complete).to(device)).to("cpu"))
        return [
            None
            if rows is None
            else {"rows": pack_tensor(rows), "embedding": pack_tensor(next(embeds))}
            for rows in found
        ]

    def seedx_row_digests(self, keys: list[str] | None = None) -> dict[str, str | None]:
        """This rank's rows by key (every key kept here when ``keys`` is None) as a SHA-256 of
        their bytes, None for a key not (completely) kept here. With ``every_rank`` capture,
        equal answers from every rank show that the ranks computed the same rows, bit for bit."""
        store = self._seedx_store()
        out: dict[str, str | None] = {}
        for key in store.keys() if keys is None else keys:
            rows = store.get(key)
            out[key] = (
                None if rows is None else hashlib.sha256(pack_tensor(rows)["data"]).hexdigest()
            )
        return out


def pack_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    """A CPU tensor as plain bytes + dtype + shape (survives any RPC serialiser)."""
    data = tensor.detach().to("cpu").contiguous()
    return {
        "dtype": str(data.dtype).removeprefix("torch."),
        "shape": list(data.shape),
        "data": data.view(torch.uint8).numpy().tobytes(),
    }


def unpack_tensor(packed: dict[str, Any]) -> torch.Tensor:
    """Inverse of :func:`pack_tensor` (a fresh, writable tensor)."""
    dtype = getattr(torch, packed["dtype"])
    raw = torch.frombuffer(bytearray(packed["data"]), dtype=torch.uint8)
    return raw.view(dtype).reshape(packed["shape"]).clone()
