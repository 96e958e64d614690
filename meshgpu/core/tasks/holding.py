"""The origin and holder roles: where a task and the copies of its inputs come from.

* **origin**: a client's submission gets a task id here (this node's id and the next
  sequence number of this life) and this node as its first holder; the replication to
  ``replicas`` holders and the acknowledgement follow (``replication.py``).
* **holder**: a hold request (from the origin's replication or the leader's repair) makes
  this node fetch the inputs (``FetchPayload``) and, once they are stored, list itself as a
  holder; it drops them (``DropPayload``) once the outcome was delivered, and restores
  what it held from its journal after a restart.

Separate from the component's reactions to table changes because these are the handlers
of the events and messages that *create* copies; what a change means for the queue, the
worker and the client lives elsewhere (see ``component.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshgpu.core.effects import DropPayload, FetchPayload, TaskRejected
from meshgpu.core.events import JournalReplayed, PayloadFetchFailed, PayloadStored, SubmitTask
from meshgpu.core.tasks.messages import HoldRequest
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.strategies import STRATEGIES
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.types import Address

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent

SEQUENCE_BASE_BITS = 40
"""Each start draws its first sequence number from [0, 2**40) x 2**20: a restarted node
(with or without its journal) never reuses a task id still alive elsewhere."""


class Holding:
    """Submissions, hold requests, payloads and journal replay of one node."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.next_sequence = tasks.rng.getrandbits(SEQUENCE_BASE_BITS) << 20
        self.first_sequence = self.next_sequence
        self.fetching: set[TaskId] = set()
        """Tasks whose inputs this node is fetching (one ``FetchPayload`` at a time)."""
        self.dropped: set[TaskId] = set()
        """Tasks whose inputs this node dropped already (one ``DropPayload`` each)."""

    def submit(self, event: SubmitTask, now: float) -> None:
        """A client submitted a task to this node: give it an id and start replicating."""
        tasks = self.tasks
        spec = event.spec
        if spec.strategy is not None and spec.strategy not in STRATEGIES:
            choices = ", ".join(sorted(STRATEGIES))
            tasks.context.emit(
                TaskRejected(event.client_ref, f"unknown strategy {spec.strategy!r}: use {choices}")
            )
            return
        task_id = TaskId(tasks.node_id, self.next_sequence)
        self.next_sequence += 1
        tasks.context.count("tasks_submitted")
        tasks.merge(TaskEntry(task_id, spec, holders=frozenset({tasks.node_id})), now, local=True)
        tasks.replication.start(
            task_id, event.client_ref, spec.replicas, now, prefer=event.copies_at
        )

    def submitted_here(self, tid: TaskId) -> bool:
        """Whether a client submitted ``tid`` to this node in this life: only such a client
        (or one that asked here, ``Delivery.watched``) is attached here to be told the
        outcome. A submission of an earlier life is resolved only when its client asks
        again: an origin restarted without its data dir cannot know it already delivered
        it (the delivered mark may have died with it), and would deliver it twice."""
        return (
            tid.origin == self.tasks.node_id
            and self.first_sequence <= tid.sequence < self.next_sequence
        )

    def payload_stored(self, event: PayloadStored, now: float) -> None:
        self.fetching.discard(event.task_id)
        if event.task_id in self.tasks.table:
            self.tasks.update(event.task_id, now, holders=frozenset({self.tasks.node_id}))

    def payload_fetch_failed(self, event: PayloadFetchFailed, now: float) -> None:
        self.fetching.discard(event.task_id)
        self.tasks.context.count("payload_fetch_failures")

    def on_hold_request(self, message: HoldRequest, source: Address, now: float) -> None:
        """Become a holder of ``message.entry``: fetch its inputs, unless held already (then
        answer with this node's copy, which lists it as a holder)."""
        tasks = self.tasks
        entry = message.entry
        tasks.merge(entry, now, local=False)
        mine = tasks.table.get(entry.task_id)
        if mine is None:
            return
        if tasks.node_id in mine.holders:
            tasks.sync.send_entries(source, [mine], [], reply=False)
        elif entry.task_id not in self.fetching:
            self.fetching.add(entry.task_id)
            origin = entry.task_id.origin
            sources = sorted(mine.holders, key=lambda n: (n != origin, n))
            tasks.context.emit(FetchPayload(entry.task_id, entry.spec.input_digest, tuple(sources)))

    def drop_delivered(self, entry: TaskEntry) -> None:
        """Drop the inputs of a delivered task this node holds (once)."""
        tid = entry.task_id
        if entry.delivered and self.tasks.node_id in entry.holders and tid not in self.dropped:
            self.dropped.add(tid)
            self.tasks.context.emit(DropPayload(tid, entry.spec.input_digest))

    def journal_replayed(self, event: JournalReplayed, now: float) -> None:
        """Restore the table from this node's journal (a restart)."""
        tasks = self.tasks
        tasks.replaying = True
        try:
            for record in event.records:
                if record.entry is None:
                    tasks.collect(record.task_id, persist=False)
                else:
                    tasks.merge(record.entry, now, local=False)
        finally:
            tasks.replaying = False
        tasks.context.count("journal_records_replayed", len(event.records))
        # Submissions of an earlier life that were never acknowledged: the replication
        # that would have acknowledged them died with it (see orphans.py).
        for tid in tasks.table.ids():
            entry = tasks.table.get(tid)
            if entry is not None and tid.origin == tasks.node_id and not entry.acknowledged:
                tasks.orphans.adopt(tid, now)
