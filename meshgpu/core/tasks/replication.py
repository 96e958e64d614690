"""The origin's side of the replication rule: acknowledge once ``replicas`` nodes hold a task.

The origin is holder #1 (its driver stored the inputs before ``SubmitTask``). It asks
``replicas - 1`` other live members, chosen at random, to hold the task (``HoldRequest``);
each fetches the inputs over the data plane, journals the entry and announces itself as a
holder. The submission is acknowledged as soon as enough holders exist. A candidate that
does not answer within ``replication_timeout_s`` (or dies) is replaced by another live
member; when every live member was tried, the origin acknowledges with the copies that
exist and says how many. It never waits forever for a peer that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshgpu.core.effects import TaskAccepted
from meshgpu.core.tasks.messages import HoldRequest
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.types import NodeId

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent


@dataclass(slots=True)
class PendingReplication:
    """What the origin waits for, for one submission."""

    client_ref: str
    target: int
    outstanding: dict[NodeId, float] = field(default_factory=dict)
    tried: set[NodeId] = field(default_factory=set)


class Replicator:
    """Submissions of this node that are not acknowledged yet."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.pending: dict[TaskId, PendingReplication] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.pending

    def __bool__(self) -> bool:
        return bool(self.pending)

    def start(self, task_id: TaskId, client_ref: str, target: int, now: float) -> None:
        """A submission was accepted here: find holders (or acknowledge at once)."""
        replication = PendingReplication(client_ref, target)
        self.pending[task_id] = replication
        self._replicate(task_id, replication, now)

    def on_change(self, entry: TaskEntry) -> None:
        """An entry changed: acknowledge if it now has enough holders."""
        replication = self.pending.get(entry.task_id)
        if replication is not None and len(entry.holders) >= replication.target:
            self._accept(entry.task_id, replication, len(entry.holders))

    def member_gone(self, node_id: NodeId) -> None:
        """A member died or left: stop waiting for it."""
        for replication in self.pending.values():
            replication.outstanding.pop(node_id, None)

    def tick(self, now: float) -> None:
        """Replace candidates that did not answer within the replication timeout."""
        timeout = self.tasks.config.replication_timeout_s
        for task_id, replication in list(self.pending.items()):
            late = [n for n, sent in replication.outstanding.items() if now - sent >= timeout]
            for node_id in late:
                del replication.outstanding[node_id]
            if late or not replication.outstanding:
                self._replicate(task_id, replication, now)

    def _accept(self, task_id: TaskId, replication: PendingReplication, copies: int) -> None:
        del self.pending[task_id]
        tasks = self.tasks
        tasks.context.count("tasks_acknowledged")
        if copies < replication.target:
            tasks.context.count("tasks_acknowledged_short")
        tasks.context.emit(
            TaskAccepted(replication.client_ref, task_id, copies, replication.target)
        )
        entry = tasks.table.get(task_id)
        if entry is not None:
            tasks.maybe_resolve(entry)

    def _replicate(self, task_id: TaskId, replication: PendingReplication, now: float) -> None:
        """Ask more holder candidates, or acknowledge with what exists when nobody is left."""
        tasks = self.tasks
        entry = tasks.table.get(task_id)
        if entry is None:
            return
        missing = replication.target - len(entry.holders) - len(replication.outstanding)
        if missing > 0:
            candidates = [
                n
                for n in tasks.mesh.live_members()
                if n not in entry.holders and n not in replication.tried
            ]
            tasks.rng.shuffle(candidates)
            members = tasks.mesh.members()
            for node_id in candidates[:missing]:
                replication.tried.add(node_id)
                replication.outstanding[node_id] = now
                tasks.context.send(members[node_id].address, HoldRequest(entry))
        if len(entry.holders) >= replication.target or not replication.outstanding:
            self._accept(task_id, replication, len(entry.holders))
