"""Who needs to hear about a change of a task's entry (targeted dissemination).

A change is sent only to the nodes that act on the entry, not to every member:

* its **holders** (they journal it, serve its inputs, keep its result, drop the payload
  once delivered, and hand it to a new leader);
* its **origin** (it replicates the submission and answers the client);
* its **worker** (the current attempt's, and the previous one's when the change moves the
  task away from it, so a superseded run is cancelled);
* its **result holders** (the worker's own copy of the result, swept once delivered);
* the **leader** of the sender's view, once the entry is acknowledged (it owns the queue;
  before the acknowledgement it could not assign the task anyway).

A change that is only the ``acknowledged`` mark (the origin accepted the submission) goes
to the leader alone, which owns the queue (the other holders get the mark with the
assignment, and adopt an unacknowledged task anyway should the origin die, see
``orphans.py``). So does a change that is only the ``started`` mark (work stealing: the
worker put the attempt on its device): only the leader proposes steals, and the holders
get the mark with the outcome. Rejected: sending the ``delivered`` mark to the holders,
origin and leader only (not the worker): one datagram less per task, but with heavy loss
(20 %) and the confirming node crashing with its data dir soon after, the mark could
vanish and the row stay behind on the holders (found by an ad-hoc simulation); every
extra copy makes that less likely.

Every other node learns of the task only if it asks (``TaskWant``), if it becomes the
leader (the holders push their open entries to it, see ``sync.py``), or through the
checksum anti-entropy, which also sends a peer only the entries it is involved in. So a
task costs a dozen datagrams whatever the mesh size, where sending every change to every
member cost about six per member. Rejected: sending every change to every member (every
node decoded and merged every state change of every task: O(n) work per change, which on
a machine hosting many daemons was most of the CPU per task).
"""

from __future__ import annotations

from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.types import NodeId


def involves(entry: TaskEntry, node_id: NodeId, leader: NodeId | None) -> bool:
    """Whether ``node_id`` needs ``entry``'s changes when ``leader`` leads the view."""
    if node_id in entry.holders or node_id == entry.task_id.origin:
        return True
    if node_id == entry.state.worker:
        return True
    if node_id == leader and entry.acknowledged:
        return True
    return node_id in entry.result_holders


def interested(entry: TaskEntry, leader: NodeId | None) -> set[NodeId]:
    """Every node that needs ``entry``'s changes when ``leader`` leads the view."""
    nodes = set(entry.holders)
    nodes.add(entry.task_id.origin)
    nodes.update(entry.result_holders)
    worker = entry.state.worker
    if worker is not None:
        nodes.add(worker)
    if leader is not None and entry.acknowledged:
        nodes.add(leader)
    return nodes


ACKNOWLEDGED = "acknowledged"
STARTED = "started"


def mark_only(before: TaskEntry | None, after: TaskEntry) -> str | None:
    """``ACKNOWLEDGED`` or ``STARTED`` when that mark is all that changed, else None."""
    if (
        before is None
        or before.state != after.state
        or before.holders != after.holders
        or before.result_holders != after.result_holders
        or before.steal != after.steal
        or after.delivered != before.delivered
    ):
        return None
    if after.acknowledged and not before.acknowledged and after.started == before.started:
        return ACKNOWLEDGED
    if after.started != before.started and after.acknowledged == before.acknowledged:
        return STARTED
    return None


def audience(entry: TaskEntry, leader: NodeId | None, mark: str | None) -> set[NodeId]:
    """The nodes a change needs to reach: :func:`interested`, or fewer for a change that is
    only a mark (see the module docstring)."""
    if mark in (ACKNOWLEDGED, STARTED):
        return set() if leader is None else {leader}
    return interested(entry, leader)


def keeps_current(entry: TaskEntry, node_id: NodeId) -> bool:
    """Whether ``node_id`` hears every change of ``entry`` whoever leads: it holds it,
    originated it, or runs it. A leader's copy of any other entry may be stale once
    leadership moved on; it is confirmed with a holder before the leader acts on it."""
    return (
        node_id in entry.holders or node_id == entry.task_id.origin or node_id == entry.state.worker
    )
