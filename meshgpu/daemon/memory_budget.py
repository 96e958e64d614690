"""One node's budget of large tensors kept in memory beside their durable copies
(docs/daemon.md, "Memory kept beside the disk").

Two parts keep such bytes: the warm inputs (warm_inputs.py: a large upload's arrays,
kept for the run that usually follows) and the early results (early_results.py: the
ranges of a result being stored, kept until its client took them). Both are caches of
a copy on disk, and each gives way when it has no room (an upload gets no warm copy,
an early result fails and its client reads the stored copy), so both draw on one
budget: an eighth of the machine's memory, at most ``MAX_BUDGET_BYTES``, for the two
together. Rejected: a budget each (the two together could hold twice what the node
means to give them, on the node that is both a large upload's entry and a large
result's); a fixed split (an entry that only receives results would leave half idle).
"""

from __future__ import annotations

import os

MAX_BUDGET_BYTES = 4 << 30


def default_budget() -> int:
    """An eighth of the machine's memory, at most ``MAX_BUDGET_BYTES``."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 30
    return int(min(MAX_BUDGET_BYTES, memory // 8))


class MemoryBudget:
    """Bytes the parts that share it may keep in memory (invoked on the event loop): a
    part takes bytes before it keeps them and gives them back when it lets them go."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        self.limit_bytes = default_budget() if limit_bytes is None else limit_bytes
        self._used = 0

    @property
    def used_bytes(self) -> int:
        return self._used

    def take(self, size: int) -> bool:
        """Count ``size`` bytes against the budget if they fit; whether they did."""
        if self._used + size > self.limit_bytes:
            return False
        self._used += size
        return True

    def give(self, size: int) -> None:
        """``size`` bytes taken before are let go."""
        self._used -= size
        assert self._used >= 0, "more bytes given back than were taken"
