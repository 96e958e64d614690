"""The origin's side of the replication rule: acknowledge once ``replicas`` nodes hold a task.

The origin is holder #1 (its driver stored the inputs before ``SubmitTask``). It asks
``replicas - 1`` other live members, chosen at random, to hold the task (``HoldRequest``);
each fetches the inputs over the data plane, journals the entry and announces itself as a
holder. The submission is acknowledged (and the entry marked ``acknowledged``, which is
what lets the leader assign it) as soon as enough holders exist.

Nodes the driver already gave a copy (``SubmitTask.copies_at``: a large upload relayed
as it arrived) are asked first, each once in that order, before the random ones: they
answer from their own disk, where any other candidate would fetch the whole payload
again.

A candidate that does not answer within ``replication_timeout_s`` (or dies) is replaced by
another live member, one not tried yet if any is left, else one tried before (a peer slow
under load is asked again; it is not given up on). The origin acknowledges with fewer
copies only when fewer live nodes than ``replicas`` exist, or once
``replication_give_up_s`` has passed since the submission; the answer says how many
copies exist. It never waits forever for a peer that is not there, and never settles for
one copy while enough live peers could hold it.
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
    started: float
    outstanding: dict[NodeId, float] = field(default_factory=dict)
    tried: set[NodeId] = field(default_factory=set)
    prefer: tuple[NodeId, ...] = ()
    """Nodes that hold a copy already (``SubmitTask.copies_at``): asked before the others."""


class Replicator:
    """Submissions of this node that are not acknowledged yet."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.pending: dict[TaskId, PendingReplication] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.pending

    def __bool__(self) -> bool:
        return bool(self.pending)

    def start(
        self,
        task_id: TaskId,
        client_ref: str,
        target: int,
        now: float,
        prefer: tuple[NodeId, ...] = (),
    ) -> None:
        """A submission was accepted here: find holders (or acknowledge at once), asking
        the nodes of ``prefer`` (which hold a copy already) first."""
        replication = PendingReplication(client_ref, target, now, prefer=prefer)
        self.pending[task_id] = replication
        self._replicate(task_id, replication, now)

    def on_change(self, entry: TaskEntry) -> None:
        """An entry changed: acknowledge if it now has enough holders."""
        replication = self.pending.get(entry.task_id)
        if replication is None:
            return
        answered = [n for n in replication.outstanding if n in entry.holders]
        for node_id in answered:
            del replication.outstanding[node_id]
        if len(entry.holders) >= replication.target:
            self._accept(entry.task_id, replication, len(entry.holders))
        elif answered:
            self._replicate(entry.task_id, replication, self.tasks.context.now)

    def member_gone(self, node_id: NodeId) -> None:
        """A member died or left: stop waiting for it."""
        for replication in self.pending.values():
            replication.outstanding.pop(node_id, None)

    def tick(self, now: float) -> None:
        """Replace candidates that did not answer within the replication timeout, and
        acknowledge short submissions whose overall bound has passed."""
        timeout = self.tasks.config.replication_timeout_s
        for task_id, replication in list(self.pending.items()):
            late = [n for n, sent in replication.outstanding.items() if now - sent >= timeout]
            for node_id in late:
                del replication.outstanding[node_id]
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
        if task_id in tasks.table:
            tasks.set_acknowledged(task_id, tasks.context.now)
        entry = tasks.table.get(task_id)
        if entry is not None:
            tasks.maybe_resolve(entry)

    def _replicate(self, task_id: TaskId, replication: PendingReplication, now: float) -> None:
        """Ask more holder candidates; acknowledge when enough hold it, when no live
        candidate is left to ask, or when the overall bound has passed."""
        tasks = self.tasks
        entry = tasks.table.get(task_id)
        if entry is None:
            return
        live = tasks.mesh.live_members()
        missing = replication.target - len(entry.holders) - len(replication.outstanding)
        if missing > 0:
            spare = [n for n in live if n not in entry.holders and n not in replication.outstanding]
            fresh = [n for n in spare if n not in replication.tried]
            again = [n for n in spare if n in replication.tried]
            tasks.rng.shuffle(fresh)
            tasks.rng.shuffle(again)
            first = [n for n in replication.prefer if n in fresh]
            if first:
                fresh = first + [n for n in fresh if n not in first]
            members = tasks.mesh.members()
            for node_id in (fresh + again)[:missing]:
                replication.tried.add(node_id)
                replication.outstanding[node_id] = now
                tasks.send(members[node_id].address, HoldRequest(entry))
        given_up = now - replication.started >= tasks.config.replication_give_up_s
        if len(entry.holders) >= replication.target or not replication.outstanding or given_up:
            self._accept(task_id, replication, len(entry.holders))
