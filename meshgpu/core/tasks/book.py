"""The task book: what this node knows about each task besides its replicated entry.

The table (``table.py``) holds what every replica agrees on; the book holds what only this
node saw, one :class:`TaskFacts` record per task of the local table: when the task was
first seen, when its state last changed, when it was acknowledged, when its retry is due,
since when its worker is gone, when each attempt was first seen assigned. Besides the
records, two indexes the periodic work walks: the open tasks (not terminal) and the
collectable ones with the time each is garbage-collected.

One record per task, created on the first sight of its entry and dropped in one place
(:meth:`TaskBook.forget`, when the entry is collected), so no per-task index can outlive
the task. The roles read and write the book; the leader's round (``leading.py``) reads
the times it schedules by from here. Rejected: one dict per fact (the shape before the
book), where every new fact was one more dict that garbage collection had to remember to
empty.

Absent facts read as "now" where the leader asks (a task it never saw change is as fresh
as it can be), which is what :meth:`TaskBook.first_seen` and the other readers return.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from meshgpu.core.tasks.spec import TaskId


@dataclass(slots=True)
class TaskFacts:
    """This node's own observations of one task (times are the driver's clock)."""

    first_seen: float
    """When this node first merged an entry of the task."""
    state_since: float
    """When the task's state last changed here."""
    acknowledged_at: float | None = None
    """When this node saw the acknowledged mark arrive."""
    retry_at: float | None = None
    """When a RETRYING task may be assigned again (its back-off passed)."""
    orphaned_at: float | None = None
    """Since when the task is ASSIGNED to a worker that is no longer live."""
    inputs_wanted_since: float | None = None
    """Since when the task waits for its inputs (no live holder seen as leader, or a
    worker reported them unavailable), until a run of it ends otherwise."""
    input_waits: int = 0
    """Workers' reports of the inputs unavailable since ``inputs_wanted_since`` (the
    back-off before the next attempt grows with them)."""
    assigned_seen: dict[int, float] = field(default_factory=dict)
    """Attempt -> when this node first saw it assigned (the adaptive model's timing)."""


class TaskBook:
    """The :class:`TaskFacts` of every task in the local table, and two indexes."""

    __slots__ = ("_records", "collect_at", "open")

    def __init__(self) -> None:
        self._records: dict[TaskId, TaskFacts] = {}
        self.open: set[TaskId] = set()
        """Tasks that are not terminal (queued, assigned or retrying)."""
        self.collect_at: dict[TaskId, float] = {}
        """Collectable tasks -> when they are garbage-collected (in the order they became
        collectable)."""

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._records

    def __iter__(self) -> Iterator[TaskId]:
        return iter(self._records)

    def get(self, task_id: TaskId) -> TaskFacts | None:
        """The record of ``task_id``, or None when it is not in the local table."""
        return self._records.get(task_id)

    def seen(self, task_id: TaskId, now: float) -> TaskFacts:
        """The first sight of ``task_id``'s entry: its record starts at ``now``."""
        facts = self._records.get(task_id)
        if facts is None:
            facts = self._records[task_id] = TaskFacts(now, now)
        else:
            facts.first_seen = facts.state_since = now
        return facts

    def forget(self, task_id: TaskId) -> None:
        """The entry was collected: drop its record and every index of it."""
        self._records.pop(task_id, None)
        self.open.discard(task_id)
        self.collect_at.pop(task_id, None)

    # --- readers with the leader's defaults ----------------------------------------------

    def first_seen(self, task_id: TaskId, default: float) -> float:
        facts = self._records.get(task_id)
        return default if facts is None else facts.first_seen

    def state_since(self, task_id: TaskId, default: float) -> float:
        facts = self._records.get(task_id)
        return default if facts is None else facts.state_since

    def acknowledged_at(self, task_id: TaskId, default: float) -> float:
        facts = self._records.get(task_id)
        if facts is None or facts.acknowledged_at is None:
            return default
        return facts.acknowledged_at

    def retry_at(self, task_id: TaskId, default: float) -> float:
        facts = self._records.get(task_id)
        if facts is None or facts.retry_at is None:
            return default
        return facts.retry_at

    def orphaned_at(self, task_id: TaskId, default: float) -> float:
        facts = self._records.get(task_id)
        if facts is None or facts.orphaned_at is None:
            return default
        return facts.orphaned_at

    def assigned_at(self, task_id: TaskId, attempt: int) -> float | None:
        """When this node first saw ``attempt`` of the task assigned, if it did."""
        facts = self._records.get(task_id)
        return None if facts is None else facts.assigned_seen.get(attempt)
