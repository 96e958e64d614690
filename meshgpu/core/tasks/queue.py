"""The leader's priority queue: CRITICAL > HIGH > NORMAL > LOW, FIFO within a priority.

The queue is not replicated state: it is a view of the replicated table that each node
keeps (every node, so that a new leader has it ready the moment it takes over). A task is
queued when it becomes PENDING or RETRYING in the local table and leaves when it is
assigned or reaches a terminal state. "FIFO" means the order in which *this* node learned
of the task, which is the submission order up to gossip delays; a task that comes back for
a retry keeps its original place.

One insertion-ordered dict per priority gives O(1) push/remove and ordered iteration,
which is all the scheduler needs (it walks the queue in order each round).
"""

from __future__ import annotations

from collections.abc import Iterator

from meshgpu.core.tasks.spec import Priority, TaskId


class TaskQueue:
    """Ordered set of queued task ids with their priority and arrival number."""

    __slots__ = ("_arrival", "_by_priority", "_next_arrival", "_priority")

    def __init__(self) -> None:
        self._by_priority: dict[Priority, dict[TaskId, None]] = {p: {} for p in Priority}
        self._priority: dict[TaskId, Priority] = {}
        self._arrival: dict[TaskId, int] = {}
        self._next_arrival = 0

    def __len__(self) -> int:
        return len(self._priority)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._priority

    def push(self, task_id: TaskId, priority: Priority) -> None:
        """Queue ``task_id``; a task already queued keeps its place. A task seen before
        (a retry) goes back to its original arrival position."""
        if task_id in self._priority:
            return
        arrival = self._arrival.setdefault(task_id, self._next_arrival)
        if arrival == self._next_arrival:
            self._next_arrival += 1
        bucket = self._by_priority[priority]
        if bucket and arrival < self._arrival[next(reversed(bucket))]:
            # Re-insert in arrival order (rare: retries only).
            items = [*bucket, task_id]
            items.sort(key=self._arrival.__getitem__)
            self._by_priority[priority] = dict.fromkeys(items)
        else:
            bucket[task_id] = None
        self._priority[task_id] = priority

    def remove(self, task_id: TaskId) -> None:
        """Take ``task_id`` out of the queue (assigned); no-op if not queued."""
        priority = self._priority.pop(task_id, None)
        if priority is not None:
            del self._by_priority[priority][task_id]

    def forget(self, task_id: TaskId) -> None:
        """Remove and drop the arrival number too (terminal or collected)."""
        self.remove(task_id)
        self._arrival.pop(task_id, None)

    def arrival(self, task_id: TaskId) -> int | None:
        """This node's arrival number for ``task_id`` (FIFO key), if it has one."""
        return self._arrival.get(task_id)

    def __iter__(self) -> Iterator[TaskId]:
        """Queued ids, highest priority first, FIFO within a priority."""
        for priority in sorted(Priority, reverse=True):
            yield from list(self._by_priority[priority])

    def lengths(self) -> dict[Priority, int]:
        """How many tasks wait at each priority."""
        return {p: len(self._by_priority[p]) for p in Priority}
