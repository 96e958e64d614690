"""The replicated task table: a state-based CRDT (a map of per-task join-semilattices).

Every field of an entry merges by a join, so the table merge is commutative, associative
and idempotent, and replicas that have seen the same updates, in any order and any number
of times, hold the same table (Shapiro et al., "Conflict-free Replicated Data Types",
2011, section 3.2 on state-based objects):

* ``spec``: immutable, identical on every replica (two different specs under one id would
  be a bug; the merge keeps the one with the smaller ``repr`` so replicas still agree, and
  counts it);
* ``state``: :func:`meshgpu.core.tasks.state.join` (the larger in a total order);
* ``holders``, ``result_holders``: grow-only sets, merged by union;
* ``delivered``: a flag that only goes from False to True (the client confirmed receipt);
* ``acknowledged``: a flag that only goes from False to True (the origin acknowledged the
  submission: it is held by ``replicas`` nodes, or by every live node when fewer exist).
  The leader assigns only acknowledged tasks, so a result is never stored on a holder set
  that replication is still growing;
* ``started``: the highest attempt its worker put on the device (attempt numbers only grow,
  across epochs too), merged by max; set only with work stealing on;
* ``steal``: the leader's request that the worker of ``attempt`` hand it to ``thief``
  (``(attempt, thief)``), merged by max; set only with work stealing on (``stealing.py``).

Garbage collection drops entries that are terminal and delivered, and records the id in a
:class:`~meshgpu.core.tasks.collected.CollectedSet`; an entry whose id is collected is
never merged back in (a tombstone beats any entry).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meshgpu.core.tasks.collected import CollectedSet
from meshgpu.core.tasks.spec import TaskId, TaskSpec
from meshgpu.core.tasks.state import PENDING, TaskState, join
from meshgpu.core.types import NodeId

StealRequest = tuple[int, NodeId]
"""``(attempt, thief)``: the leader asks the worker of that attempt to hand it to ``thief``."""


def join_steal(a: StealRequest | None, b: StealRequest | None) -> StealRequest | None:
    """The larger of two steal requests (None is the least)."""
    if a is None:
        return b
    if b is None or a >= b:
        return a
    return b


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One row of the table: what every replica knows about a task."""

    task_id: TaskId
    spec: TaskSpec
    state: TaskState = PENDING
    holders: frozenset[NodeId] = frozenset()
    result_holders: frozenset[NodeId] = frozenset()
    delivered: bool = False
    acknowledged: bool = False
    started: int = 0
    steal: StealRequest | None = None

    @property
    def collectable(self) -> bool:
        """Terminal and delivered: nothing more will ever be done with it."""
        return self.state.terminal and self.delivered


def merge_entries(a: TaskEntry, b: TaskEntry) -> TaskEntry:
    """The join of two entries for the same task id."""
    if a.task_id != b.task_id:
        raise ValueError(f"cannot merge entries of different tasks {a.task_id} and {b.task_id}")
    spec = a.spec if a.spec == b.spec or repr(a.spec) <= repr(b.spec) else b.spec
    return TaskEntry(
        task_id=a.task_id,
        spec=spec,
        state=join(a.state, b.state),
        holders=a.holders | b.holders,
        result_holders=a.result_holders | b.result_holders,
        delivered=a.delivered or b.delivered,
        acknowledged=a.acknowledged or b.acknowledged,
        started=a.started if a.started >= b.started else b.started,
        steal=a.steal if a.steal == b.steal else join_steal(a.steal, b.steal),
    )


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """What a merge did: the entry before (None if new) and after (None if tombstoned)."""

    before: TaskEntry | None
    after: TaskEntry | None

    @property
    def changed(self) -> bool:
        """True when the local table is different after the merge."""
        return self.after is not None and self.after != self.before


class TaskTable:
    """One replica of the table: entries by id plus the tombstones of collected ones."""

    __slots__ = ("_entries", "collected", "spec_conflicts")

    def __init__(self) -> None:
        self._entries: dict[TaskId, TaskEntry] = {}
        self.collected = CollectedSet()
        self.spec_conflicts = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TaskEntry]:
        return iter(list(self._entries.values()))

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._entries

    def get(self, task_id: TaskId) -> TaskEntry | None:
        """The entry for ``task_id``, or None if unknown or collected."""
        return self._entries.get(task_id)

    def ids(self) -> list[TaskId]:
        """Every live id, sorted (deterministic iteration for drivers and tests)."""
        return sorted(self._entries)

    def merge(self, entry: TaskEntry) -> MergeOutcome:
        """Join ``entry`` into the table; a collected id stays collected."""
        if entry.task_id in self.collected:
            return MergeOutcome(None, None)
        before = self._entries.get(entry.task_id)
        if before is None:
            after = entry
        else:
            if before.spec != entry.spec:
                self.spec_conflicts += 1
            after = merge_entries(before, entry)
        self._entries[entry.task_id] = after
        return MergeOutcome(before, after)

    def update(
        self,
        task_id: TaskId,
        *,
        state: TaskState | None = None,
        holders: frozenset[NodeId] = frozenset(),
        result_holders: frozenset[NodeId] = frozenset(),
        delivered: bool = False,
        acknowledged: bool = False,
        started: int = 0,
        steal: StealRequest | None = None,
    ) -> MergeOutcome:
        """Apply a local change (a new state, more holders, the delivered, acknowledged or
        started mark, a steal request) as a merge, so a local update can never move
        anything down. Raises KeyError for an unknown id."""
        current = self._entries[task_id]
        change = TaskEntry(
            task_id,
            current.spec,
            current.state if state is None else state,
            current.holders | holders,
            current.result_holders | result_holders,
            current.delivered or delivered,
            current.acknowledged or acknowledged,
            max(current.started, started),
            join_steal(current.steal, steal),
        )
        return self.merge(change)

    def collect(self, task_id: TaskId) -> TaskEntry | None:
        """Drop ``task_id`` and remember it as collected; returns the dropped entry."""
        self.collected.add(task_id)
        return self._entries.pop(task_id, None)

    def merge_collected(self, runs: list[tuple[NodeId, int, int]]) -> list[TaskEntry]:
        """Union another replica's tombstones in; returns the entries that this drops."""
        self.collected.update(runs)
        dropped = [e for e in self._entries.values() if e.task_id in self.collected]
        for entry in dropped:
            del self._entries[entry.task_id]
        return dropped

    def snapshot(self) -> dict[TaskId, TaskEntry]:
        """A copy of the entries (for invariant checkers and tests)."""
        return dict(self._entries)
