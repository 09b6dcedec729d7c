"""Which waiting jobs run together next: compatible groups, a short gather window, no starvation.

Pure bookkeeping (no torch, no asyncio, the clock is passed in), so the policy is tested on its
own. Jobs are grouped by a *batch key* (everything a UNet batch must share: size, step count,
scheduler). A group is *ready* when it is full, when its oldest job has waited ``wait_s`` for
companions, or when that job is starving. Among ready groups:

1. a group whose oldest job has waited ``starvation_s`` goes first (oldest first), so no job
   waits more than that plus the batch already running;
2. then the highest job priority;
3. then the group that fills the largest batch, then the oldest.

So an odd job at the head of the queue does not hold back the compatible jobs behind it
(vLLM-Omni's first-in-first-out batching does, issue 5), and is itself served within the
starvation bound. Inside a group, jobs are taken by priority, then arrival.

Step-level batching (issue 25): while a batch runs, :meth:`BatchQueue.take` lets waiting jobs
of its group *join* it at the next step boundary (no gather window: joining costs nothing),
up to the batch limits. It stops taking them once another group is starving or a ready group
has a higher priority, so the running batch drains and the policy above picks that group next:
the starvation bound becomes ``starvation_s`` plus one generation, as with batch-level batching.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class BatchPolicy:
    """Limits of one batch and how long jobs may wait for one."""

    max_batch: int
    max_batch_pixels: int
    wait_s: float
    starvation_s: float

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_batch_pixels < 1:
            raise ValueError("max_batch and max_batch_pixels must be positive")
        if not 0 <= self.wait_s <= self.starvation_s:
            raise ValueError("need 0 <= wait_s <= starvation_s")

    def limit(self, pixels: int) -> int:
        """Images of ``pixels`` each that one batch may hold (at least one)."""
        return max(1, min(self.max_batch, self.max_batch_pixels // max(1, pixels)))


@dataclass(frozen=True)
class _Entry(Generic[T]):
    item: T
    key: Hashable
    priority: int
    pixels: int
    arrived: float


@dataclass(frozen=True)
class _Candidate:
    key: Hashable
    starved: bool
    oldest: float
    priority: int
    fill: int

    def rank(self) -> tuple[bool, float, int, int, float]:
        """Sort key: starved first (oldest first among them), priority, fill, age."""
        return (not self.starved, self.oldest if self.starved else 0.0, -self.priority,
                -self.fill, self.oldest)  # fmt: skip


class BatchQueue(Generic[T]):
    """Waiting jobs grouped by batch key; see the module docstring for the policy."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._groups: dict[Hashable, list[_Entry[T]]] = {}
        self._entries: dict[T, _Entry[T]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: object) -> bool:
        return item in self._entries

    def add(self, item: T, key: Hashable, *, priority: int, pixels: int, now: float) -> None:
        """Queue ``item`` (an image of ``pixels`` pixels) under ``key``."""
        if item in self._entries:
            raise ValueError("item is already queued")
        entry = _Entry(item, key, priority, pixels, now)
        self._entries[item] = entry
        self._groups.setdefault(key, []).append(entry)

    def remove(self, item: T) -> bool:
        """Withdraw a waiting item (cancelled, expired); False if it was not waiting."""
        entry = self._entries.pop(item, None)
        if entry is None:
            return False
        group = self._groups[entry.key]
        group.remove(entry)
        if not group:
            del self._groups[entry.key]
        return True

    def items(self) -> list[T]:
        """Every waiting item, in arrival order."""
        return [entry.item for entry in sorted(self._entries.values(), key=lambda e: e.arrived)]

    def _candidate(self, key: Hashable, group: list[_Entry[T]], now: float) -> _Candidate | None:
        oldest = group[0].arrived  # groups are appended in arrival order
        waited = now - oldest
        limit = self.policy.limit(group[0].pixels)
        starved = waited >= self.policy.starvation_s
        if not (starved or len(group) >= limit or waited >= self.policy.wait_s):
            return None
        priority = max(entry.priority for entry in group)
        return _Candidate(key, starved, oldest, priority, min(len(group), limit))

    def next_batch(self, now: float) -> list[T] | None:
        """Removes and returns the next batch to run, or None while no group is ready."""
        candidates = [
            candidate
            for key, group in self._groups.items()
            if (candidate := self._candidate(key, group, now)) is not None
        ]
        if not candidates:
            return None
        best = min(candidates, key=_Candidate.rank)
        group = sorted(self._groups[best.key], key=lambda e: (-e.priority, e.arrived))
        chosen = [entry.item for entry in group[: best.fill]]
        for item in chosen:
            self.remove(item)
        return chosen

    def take(self, key: Hashable, running: int, now: float) -> list[T]:
        """Removes and returns the jobs of group ``key`` that join a running batch of ``running``
        jobs at its next step (module docstring); empty when none may."""
        group = self._groups.get(key)
        if not group:
            return []
        room = self.policy.limit(group[0].pixels) - running
        if room <= 0:
            return []
        ordered = sorted(group, key=lambda e: (-e.priority, e.arrived))
        for other_key, other in self._groups.items():
            candidate = None if other_key == key else self._candidate(other_key, other, now)
            if candidate and (candidate.starved or candidate.priority > ordered[0].priority):
                return []
        chosen = [entry.item for entry in ordered[:room]]
        for item in chosen:
            self.remove(item)
        return chosen

    def ready_in(self, now: float) -> float | None:
        """Seconds until some group is ready (0: one is now); None when nothing waits."""
        if not self._groups:
            return None
        delays = []
        for group in self._groups.values():
            if len(group) >= self.policy.limit(group[0].pixels):
                return 0.0
            delays.append(group[0].arrived + self.policy.wait_s - now)
        return max(0.0, min(delays))
