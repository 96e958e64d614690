"""Tombstones of garbage-collected tasks, kept compact as per-origin intervals.

Once a task is terminal and its result delivered, its entry is dropped from the table. A
peer that was partitioned away may still gossip the old entry; without a tombstone the
merge would bring it back (the classic "resurrection" of deleted CRDT entries). Each node
hands out consecutive sequence numbers, and tasks finish roughly in order, so the ids of
collected tasks form a few runs per origin: storing runs as ``[low, high]`` intervals keeps
the tombstones of a long-lived mesh a handful of integers per node. Union is the merge.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.types import NodeId


class CollectedSet:
    """A grow-only set of task ids, stored as sorted disjoint inclusive intervals per origin."""

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        # origin -> sorted, disjoint, non-adjacent [low, high] runs
        self._runs: dict[NodeId, list[tuple[int, int]]] = {}

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, TaskId):
            return False
        runs = self._runs.get(task_id.origin)
        if not runs:
            return False
        index = bisect.bisect_right(runs, (task_id.sequence, 2**63)) - 1
        return index >= 0 and runs[index][0] <= task_id.sequence <= runs[index][1]

    def run_of(self, task_id: TaskId) -> tuple[NodeId, int, int] | None:
        """The interval holding ``task_id`` as ``(origin, low, high)``, or None."""
        runs = self._runs.get(task_id.origin)
        if not runs:
            return None
        index = bisect.bisect_right(runs, (task_id.sequence, 2**63)) - 1
        if index >= 0 and runs[index][0] <= task_id.sequence <= runs[index][1]:
            return task_id.origin, runs[index][0], runs[index][1]
        return None

    def add(self, task_id: TaskId) -> None:
        """Mark one task id collected."""
        self.add_run(task_id.origin, task_id.sequence, task_id.sequence)

    def add_run(self, origin: NodeId, low: int, high: int) -> None:
        """Mark sequences ``low..high`` (inclusive) of ``origin`` collected."""
        runs = self._runs.setdefault(origin, [])
        merged_low, merged_high = low, high
        kept: list[tuple[int, int]] = []
        for run_low, run_high in runs:
            if run_high + 1 < merged_low or run_low > merged_high + 1:
                kept.append((run_low, run_high))
            else:
                merged_low = min(merged_low, run_low)
                merged_high = max(merged_high, run_high)
        kept.append((merged_low, merged_high))
        kept.sort()
        self._runs[origin] = kept

    def update(self, runs: Iterable[tuple[NodeId, int, int]]) -> None:
        """Union with another set given as its :meth:`runs`."""
        for origin, low, high in runs:
            self.add_run(origin, low, high)

    def runs(self) -> Iterator[tuple[NodeId, int, int]]:
        """Every interval as ``(origin, low, high)``, the wire and journal form."""
        for origin in sorted(self._runs):
            for low, high in self._runs[origin]:
                yield origin, low, high

    def has_runs(self) -> bool:
        """Whether any interval is stored (``run_count() > 0`` without counting them all:
        asked on every deadline computation)."""
        runs = self._runs
        return bool(runs) and any(runs.values())

    def run_count(self) -> int:
        """How many intervals are stored (what the memory cost grows with)."""
        return sum(len(runs) for runs in self._runs.values())
