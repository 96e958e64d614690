"""The client side: tell a waiting client its task's outcome, once.

A client waits on the node it submitted to (the origin) or on any node it asks
(``ResultRequested``: the task is then *watched* here). Such a node emits
``TaskResolved`` once per outcome: when the entry turns terminal, never before the
submission was acknowledged (the client learns the id from the acknowledgement), again
only if the task is re-run after its result was lost (a new epoch). A node that hears of
the task anyway (it holds, originated or runs it) waits for its changes; any other asks
for the entry on every sync round until resolved. ``ResultCollected`` (the client has
it) sets the delivered mark, after which the holders drop the payloads and the entry is
garbage-collected.

Separate from the component because it is the only role that answers to a client rather
than to the mesh, with its own state (who waits here, who was told).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshgpu.core.effects import TaskResolved
from meshgpu.core.events import ResultCollected, ResultRequested
from meshgpu.core.tasks.interest import keeps_current
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.state import Resolution
from meshgpu.core.tasks.table import TaskEntry

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent


class Delivery:
    """Which tasks a client waits for on this node, and which it was told about."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.watched: set[TaskId] = set()
        """Tasks a client asked this node for (``ResultRequested``), until collected."""
        self.resolved: set[TaskId] = set()
        """Tasks whose current outcome this node told its client (``TaskResolved``)."""

    def result_requested(self, event: ResultRequested, now: float) -> None:
        tasks = self.tasks
        tid = event.task_id
        entry = tasks.table.get(tid)
        if tid in tasks.table.collected or (
            entry is not None and entry.state.terminal and entry.delivered
        ):
            # Delivered (and perhaps garbage-collected already): say so rather than leave
            # the client waiting; the payloads may be gone from the holders.
            tasks.context.emit(
                TaskResolved(tid, Resolution.COLLECTED, "outcome already delivered", ())
            )
            return
        self.watched.add(tid)
        if entry is not None and entry.state.terminal and not entry.delivered:
            self.resolve(entry)
        elif not self.hears_of(tid):
            # This node may hold no copy, or a stale one (only the nodes involved in a task
            # hear its changes): ask for it now and on every sync round until resolved.
            tasks.sync.ask_for_watched([tid])

    def result_collected(self, event: ResultCollected, now: float) -> None:
        self.watched.discard(event.task_id)
        if event.task_id in self.tasks.table:
            self.tasks.update(event.task_id, now, delivered=True)

    def ask_for_unheard(self) -> None:
        """Ask the mesh for the watched tasks this node would not hear of (a sync round)."""
        watched = [t for t in self.watched if t not in self.resolved and not self.hears_of(t)]
        if watched:
            self.tasks.sync.ask_for_watched(sorted(watched))

    def maybe_resolve(self, entry: TaskEntry) -> None:
        """Tell this node's client about a finished task, once, and never before the
        submission was acknowledged (the client learns the id from the acknowledgement)."""
        tasks = self.tasks
        tid = entry.task_id
        if (
            entry.state.terminal
            and not entry.delivered
            and tid not in self.resolved
            and tid not in tasks.replication
            and (tasks.holding.submitted_here(tid) or tid in self.watched)
        ):
            self.resolve(entry)

    def hears_of(self, tid: TaskId) -> bool:
        """Whether this node hears every change of ``tid`` anyway (it holds, originated or
        runs it): a client waiting here for it needs no asking around (the daemon asks
        for every result its clients wait on, at the origin too)."""
        entry = self.tasks.table.get(tid)
        return entry is not None and keeps_current(entry, self.tasks.node_id)

    def resolve(self, entry: TaskEntry) -> None:
        self.resolved.add(entry.task_id)
        origin = entry.task_id.origin
        holders = tuple(sorted(entry.result_holders, key=lambda n: (n != origin, n)))
        self.tasks.context.emit(
            TaskResolved(
                entry.task_id, Resolution(entry.state.phase.value), entry.state.reason, holders
            )
        )

    def forget(self, tid: TaskId) -> None:
        """The entry was collected: a client still waiting here learns so."""
        if tid in self.watched and tid not in self.resolved:
            # A client asked here for an outcome that was delivered and collected meanwhile.
            self.tasks.context.emit(
                TaskResolved(tid, Resolution.COLLECTED, "outcome already delivered", ())
            )
        self.watched.discard(tid)
        self.resolved.discard(tid)
