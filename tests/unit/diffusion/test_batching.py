"""The batching policy on its own (fake clock): compatible groups, the window, no starvation."""

from __future__ import annotations

import pytest

from workers.diffusion.batching import BatchPolicy, BatchQueue

SMALL, LARGE = (64, 64), (128, 128)


def queue(max_batch: int = 4, wait_s: float = 0.1, starvation_s: float = 2.0) -> BatchQueue[str]:
    return BatchQueue(BatchPolicy(max_batch, 10**9, wait_s, starvation_s))


def add(q: BatchQueue[str], name: str, key: tuple[int, int], now: float, priority: int = 0) -> None:
    q.add(name, key, priority=priority, pixels=key[0] * key[1], now=now)


def test_a_full_group_runs_at_once_and_waits_otherwise() -> None:
    q = queue(max_batch=2)
    add(q, "a", SMALL, now=0.0)
    assert q.next_batch(0.01) is None  # alone, inside its window
    assert q.ready_in(0.01) == pytest.approx(0.09)
    add(q, "b", SMALL, now=0.02)
    assert q.ready_in(0.02) == 0.0
    assert q.next_batch(0.02) == ["a", "b"]
    assert len(q) == 0
    assert q.ready_in(0.02) is None


def test_window_closes_a_partial_batch() -> None:
    q = queue()
    add(q, "a", SMALL, now=0.0)
    add(q, "b", SMALL, now=0.05)
    assert q.next_batch(0.09) is None
    assert q.next_batch(0.1) == ["a", "b"]


def test_incompatible_head_does_not_block_compatible_jobs() -> None:
    q = queue(max_batch=3)
    add(q, "odd", LARGE, now=0.0)
    for i, name in enumerate(["b", "c", "d"]):
        add(q, name, SMALL, now=0.001 * (i + 1))
    assert q.next_batch(0.003) == ["b", "c", "d"]  # full group first, not FIFO
    assert q.next_batch(0.003) is None  # the odd one waits for its window only
    assert q.next_batch(0.1) == ["odd"]


def test_larger_group_wins_among_ready_groups() -> None:
    q = queue(max_batch=4)
    add(q, "odd", LARGE, now=0.0)
    add(q, "b", SMALL, now=0.01)
    add(q, "c", SMALL, now=0.02)
    assert q.next_batch(0.2) == ["b", "c"]
    assert q.next_batch(0.2) == ["odd"]


def test_starving_job_goes_first() -> None:
    q = queue(max_batch=2, wait_s=0.0, starvation_s=1.0)
    add(q, "odd", LARGE, now=0.0)
    served = []
    for t in range(4):  # a steady stream of full compatible batches
        now = 0.4 * t
        add(q, f"x{t}", SMALL, now=now)
        add(q, f"y{t}", SMALL, now=now)
        batch = q.next_batch(now)
        assert batch is not None
        served.append(batch)
    assert served[:3] == [["x0", "y0"], ["x1", "y1"], ["x2", "y2"]]
    assert served[3] == ["odd"]  # waited 1.2 s >= starvation_s: served before x3/y3


def test_priority_orders_groups_and_jobs() -> None:
    q = queue(max_batch=2, wait_s=0.0)
    add(q, "low1", SMALL, now=0.0)
    add(q, "low2", SMALL, now=0.0)
    add(q, "urgent", LARGE, now=0.1, priority=5)
    assert q.next_batch(0.1) == ["urgent"]
    add(q, "mid", SMALL, now=0.2, priority=3)
    assert q.next_batch(0.2) == ["mid", "low1"]


def test_pixel_budget_limits_large_batches() -> None:
    q: BatchQueue[str] = BatchQueue(BatchPolicy(8, 2 * 128 * 128, 0.1, 2.0))
    for name in "abc":
        add(q, name, LARGE, now=0.0)
    assert q.policy.limit(128 * 128) == 2
    assert q.next_batch(0.0) == ["a", "b"]
    assert q.policy.limit(10**9) == 1  # a huge image still runs, alone


def test_remove_withdraws_a_waiting_job() -> None:
    q = queue(max_batch=2)
    add(q, "a", SMALL, now=0.0)
    add(q, "b", SMALL, now=0.0)
    assert q.remove("a")
    assert not q.remove("a")
    assert "a" not in q
    assert q.items() == ["b"]
    assert q.next_batch(0.2) == ["b"]


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="wait_s"):
        BatchPolicy(4, 100, wait_s=3.0, starvation_s=1.0)
    with pytest.raises(ValueError, match="max_batch"):
        BatchPolicy(0, 100, 0.1, 1.0)
    q = queue()
    add(q, "a", SMALL, now=0.0)
    with pytest.raises(ValueError, match="already"):
        add(q, "a", SMALL, now=0.0)


def test_take_fills_a_running_batch_at_once_up_to_its_limit() -> None:
    q = queue(max_batch=3, wait_s=1.0)
    for name, at in (("a", 0.0), ("b", 0.01), ("c", 0.02)):
        add(q, name, SMALL, now=at)
    add(q, "odd", LARGE, now=0.0)
    assert q.take(SMALL, running=1, now=0.03) == ["a", "b"]  # no window: joining is free
    assert q.take(SMALL, running=3, now=0.03) == []  # full
    assert q.take(LARGE, running=3, now=0.03) == []  # its limit is 3 images too
    assert q.take((1, 1), running=0, now=0.03) == []  # nothing of that group waits
    assert q.items() == ["odd", "c"]


def test_take_stops_for_a_starving_or_higher_priority_group() -> None:
    q = queue(max_batch=4, wait_s=0.1, starvation_s=2.0)
    add(q, "odd", LARGE, now=0.0)
    add(q, "a", SMALL, now=0.0)
    assert q.take(SMALL, running=1, now=1.0) == ["a"]
    add(q, "b", SMALL, now=1.0)
    assert q.take(SMALL, running=1, now=2.0) == []  # odd starves: the batch drains
    assert q.next_batch(2.0) == ["odd"]
    add(q, "urgent", LARGE, now=2.0, priority=5)
    assert q.take(SMALL, running=1, now=2.05) == ["b"]  # urgent not ready yet (window)
    add(q, "c", SMALL, now=2.1)
    assert q.take(SMALL, running=1, now=2.2) == []  # ready and of higher priority
    add(q, "d", SMALL, now=2.2, priority=9)
    assert q.take(SMALL, running=1, now=2.2) == ["d", "c"]
