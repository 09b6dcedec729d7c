"""The soak's leak figures: sustained growth is told apart from one allocator step."""

from __future__ import annotations

from seedx.chaos.load import slope, sustained_slope


def test_slope_of_a_line() -> None:
    assert slope([(x, 100 + 3 * x) for x in range(10)]) == 3


def test_a_leak_is_sustained() -> None:
    points = [(x, 1e9 + 50_000 * x) for x in range(16)]
    assert sustained_slope(points) == 50_000


def test_one_step_is_not_sustained() -> None:
    # one 10 MiB arena step between two flat stretches: a large overall slope, no sustained one
    points = [(x, 1e9 + (10 * 2**20 if x >= 11 else 0)) for x in range(16)]
    assert slope(points) > 64 * 1024
    assert sustained_slope(points) < 1024


def test_too_few_points_fall_back_to_the_slope() -> None:
    assert sustained_slope([(0, 0), (1, 5), (2, 10)]) == 5
