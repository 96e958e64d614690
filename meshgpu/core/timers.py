"""Named deadlines for a sans-IO state machine: schedule, cancel, ask which are due.

A node has many timers (the next probe, a probe's ack timeout, one per suspicion, the
next gossip round, ...). They live here as ``key -> deadline``; a heap with lazy deletion
gives the earliest one in O(log n), which is what ``Node.next_deadline`` reports to the
driver. Keys are hashable tuples such as ``("suspicion", node_id)``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable


class Timers:
    """A set of named deadlines with O(log n) schedule and earliest-deadline lookup."""

    def __init__(self) -> None:
        self._deadlines: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._counter = 0
        self._earliest: float | None = None
        """The earliest live deadline as last computed, or None when it must be looked up
        again. ``Node`` asks for it after every event, far more often than timers move."""

    def __contains__(self, key: Hashable) -> bool:
        return key in self._deadlines

    def __len__(self) -> int:
        return len(self._deadlines)

    def get(self, key: Hashable) -> float | None:
        """The deadline of ``key``, or None if it is not scheduled."""
        return self._deadlines.get(key)

    def schedule(self, key: Hashable, deadline: float) -> None:
        """Set (or move) the deadline of ``key``."""
        deadlines = self._deadlines
        previous = deadlines.get(key)
        if previous == deadline:
            return
        deadlines[key] = deadline
        self._counter += 1
        heapq.heappush(self._heap, (deadline, self._counter, key))
        earliest = self._earliest
        if earliest is not None:
            if previous == earliest:
                self._earliest = None  # the earliest one moved: look again
            elif deadline < earliest:
                self._earliest = deadline

    def cancel(self, key: Hashable) -> None:
        """Forget ``key`` (no-op if not scheduled)."""
        if self._deadlines.pop(key, None) == self._earliest:
            self._earliest = None

    def next_deadline(self) -> float:
        """The earliest scheduled deadline, or +inf when nothing is scheduled."""
        earliest = self._earliest
        if earliest is not None:
            return earliest
        heap = self._heap
        deadlines = self._deadlines
        while heap:
            deadline, _, key = heap[0]
            if deadlines.get(key) == deadline:
                self._earliest = deadline
                return deadline
            heapq.heappop(heap)
        self._earliest = math.inf
        return math.inf

    def pop_due(self, now: float) -> list[Hashable]:
        """Remove and return the keys whose deadline is ``<= now``, earliest first."""
        due: list[Hashable] = []
        self._earliest = None
        heap = self._heap
        deadlines = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if deadlines.get(key) == deadline:
                del deadlines[key]
                due.append(key)
        return due
