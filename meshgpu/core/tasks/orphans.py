"""Orphaned submissions and unclaimed outcomes: rows nobody would ever finish or collect.

* **Orphan**: a task whose origin died (or restarted) before acknowledging it. The holder
  that stored its inputs would keep an unacknowledged row forever: its replication died
  with the origin, and the leader never assigns an unacknowledged task. It is **adopted**:
  the holder (once the origin is declared dead or left), or the origin itself (replaying
  its journal, or receiving back an entry it is not replicating), sets the acknowledged
  mark, and the task runs like any other. Rejected: garbage-collecting it. The origin
  emits ``TaskAccepted`` before the mark reaches any peer, so a crash between the two
  leaves a client holding an acknowledgement that only this row can honour; adopting
  costs at most one extra execution when the client did resubmit.
* **Unclaimed outcome**: a terminal, undelivered task whose origin is dead or left (an
  adopted orphan whose client never learned the id, or a client gone with its entry node)
  that no client asked this node for. A holder keeps it ``unclaimed_keep_s``, then sets
  the delivered mark, so the ordinary garbage collection ends the row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshgpu.core.membership import LIVE_STATES, MemberInfo
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.types import NodeId

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent


def origin_gone(task_id: TaskId, members: dict[NodeId, MemberInfo]) -> bool:
    """Whether ``task_id``'s origin is known and declared dead or left."""
    info = members.get(task_id.origin)
    return info is not None and info.state not in LIVE_STATES


class Orphans:
    """The rows of one node's table that may be orphans or unclaimed outcomes."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.unacknowledged: set[TaskId] = set()
        """Held here, originated elsewhere, not acknowledged yet."""
        self.unclaimed: dict[TaskId, float | None] = {}
        """Held here, terminal, undelivered -> since when its origin is seen gone."""

    def on_change(self, entry: TaskEntry) -> None:
        """Keep both index sets current (called on every change of the local table)."""
        tid = entry.task_id
        me = self.tasks.node_id
        held = me in entry.holders
        if held and not entry.acknowledged and tid.origin != me:
            self.unacknowledged.add(tid)
        else:
            self.unacknowledged.discard(tid)
        if held and entry.state.terminal and not entry.delivered:
            self.unclaimed.setdefault(tid, None)
        else:
            self.unclaimed.pop(tid, None)

    def forget(self, task_id: TaskId) -> None:
        self.unacknowledged.discard(task_id)
        self.unclaimed.pop(task_id, None)

    def adopt_gone_origins(self, now: float) -> None:
        """Adopt the unacknowledged tasks held here whose origin is dead or left."""
        if not self.unacknowledged:
            return
        members = self.tasks.mesh.members()
        for tid in sorted(self.unacknowledged):
            if origin_gone(tid, members):
                self.adopt(tid, now)

    def adopt(self, task_id: TaskId, now: float) -> None:
        """Set an orphan's acknowledged mark, so the leader assigns it like any other."""
        tasks = self.tasks
        entry = tasks.table.get(task_id)
        if entry is None or entry.acknowledged:
            return
        tasks.context.count("orphans_adopted")
        tasks.set_acknowledged(task_id, now)

    def check(self, now: float, watched: set[TaskId]) -> None:
        """Every sync round: orphans whose origin died while this node was down too, and
        unclaimed outcomes past ``unclaimed_keep_s`` (``watched``: ids a client asked this
        node for, never dropped)."""
        self.adopt_gone_origins(now)
        if not self.unclaimed:
            return
        tasks = self.tasks
        keep = tasks.config.unclaimed_keep_s
        members = tasks.mesh.members()
        for tid in sorted(self.unclaimed):
            if tid in watched or not origin_gone(tid, members):
                self.unclaimed[tid] = None
                continue
            since = self.unclaimed[tid]
            if since is None:
                self.unclaimed[tid] = now
            elif now - since >= keep:
                tasks.context.count("unclaimed_results_dropped")
                tasks.mark_delivered(tid, now)
