"""The task queue as a node component: every role a node plays for a task.

One component, because every role reacts to the same thing, a change of an entry of the
local table (``_on_change``), whether it came from a local action, a peer's update, or
the journal. This module holds that reaction, the table it guards, the :class:`Component`
interface the node drives, and the periodic work; each role's own logic and state is a
module of its own:

* **origin** and **holder** (``holding.py``): accepts a submission, replicates it to
  ``replicas`` holders and acknowledges (``replication.py``); fetches and keeps the
  inputs, journals the entry (``Persist``), drops the payload once delivered;
* **leader** (``leading.py``): expires deadlines, times out and reassigns, runs
  scheduling rounds over the inputs every node keeps current (``scheduling_inputs.py``);
* **worker** (``worker.py``): runs what is assigned to it, reports the outcome;
* **client side** (``delivery.py``): resolves a task to its client once, marks it
  delivered.

Every local change is sent, at the end of the handler that made it (batched, one
``TaskUpdate`` per destination), to the nodes involved in the task only (``interest.py``:
holders, origin, worker, and the leader once acknowledged); a node that becomes leader
gets the open entries pushed by their holders and confirms its own older copies with them
before acting on them; a checksum anti-entropy exchange with one random peer every
``sync_interval_s``, over the entries that peer is involved in, repairs lost datagrams and
partitions (all in ``sync.py``). See docs/task-queue.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.effects import DropPayload, Persist
from meshgpu.core.events import (
    JournalReplayed,
    PayloadFetchFailed,
    PayloadStored,
    ResultCollected,
    ResultRequested,
    SubmitTask,
    TaskFinished,
    TaskStarted,
)
from meshgpu.core.load import LoadVector
from meshgpu.core.membership import LIVE_STATES, MemberInfo
from meshgpu.core.messages import Envelope, Message
from meshgpu.core.tasks.adaptive import LatencyModel
from meshgpu.core.tasks.book import TaskBook
from meshgpu.core.tasks.breaker import BreakerBoard
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.delivery import Delivery
from meshgpu.core.tasks.holding import Holding
from meshgpu.core.tasks.interest import keeps_current, mark_only
from meshgpu.core.tasks.leading import AssignmentRecord, Leading
from meshgpu.core.tasks.mesh_view import MeshView, NodeMeshView
from meshgpu.core.tasks.messages import HoldRequest, TaskDigest, TaskUpdate, TaskWant
from meshgpu.core.tasks.orphans import Orphans
from meshgpu.core.tasks.own_load import OwnLoad
from meshgpu.core.tasks.queue import TaskQueue
from meshgpu.core.tasks.records import TaskRecord
from meshgpu.core.tasks.replication import Replicator
from meshgpu.core.tasks.scheduling_inputs import observe_outcome, requeue
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.state import Phase, TaskState
from meshgpu.core.tasks.strategies import SelectionContext
from meshgpu.core.tasks.sync import TableSync
from meshgpu.core.tasks.table import TaskEntry, TaskTable
from meshgpu.core.tasks.worker import Worker, failure_state
from meshgpu.core.types import Address, NodeId

__all__ = ["NodeMeshView", "TaskComponent"]  # core/node.py imports both from here


class TaskComponent(Component):
    """The task queue of one node."""

    message_types = (TaskUpdate, HoldRequest, TaskDigest, TaskWant)

    def __init__(
        self, context: NodeContext, mesh: MeshView, config: TaskConfig, now: float
    ) -> None:
        self.context = context
        self.mesh = mesh
        self.config = config
        self.node_id = context.node_id
        self.rng = random.Random(context.rng.getrandbits(64))
        self.table = TaskTable()
        self.queue = TaskQueue()
        self.breakers = BreakerBoard(config.breaker)
        self.learned = LatencyModel(config.adaptive_alpha)
        self.selection = SelectionContext(learned=self.learned)
        self.book = TaskBook()
        """This node's own facts about each task of the table (``book.py``)."""
        self.leading = Leading(self)
        self.worker = Worker(self)
        self.holding = Holding(self)  # draws the first sequence number from self.rng
        self.replication = Replicator(self)
        self.delivery = Delivery(self)
        self._outbox: dict[TaskId, TaskEntry] = {}
        self._notify: dict[TaskId, set[NodeId]] = {}
        self._marks: dict[TaskId, str | None] = {}
        self.known_leader: NodeId | None = None
        """The leader as of this component's last look (a change means a hand-over)."""
        self.unconfirmed: set[TaskId] = set()
        self.handed_over: set[NodeId] = set()
        self.orphans = Orphans(self)
        self.replaying = False
        """True while the journal is replayed: nothing is journaled again."""
        self.sync = TableSync(self)
        self._sync_at = now + self.rng.uniform(0.0, config.sync_interval_s)
        self._tick_at = math.inf
        self.schedule_at = math.inf
        self.repair_at = math.inf
        self.own_load = OwnLoad(config)
        self.assignment_log: list[AssignmentRecord] = []
        self._event_handlers: dict[type, Callable[[Any, float], None]] = {
            SubmitTask: self.holding.submit,
            PayloadStored: self.holding.payload_stored,
            PayloadFetchFailed: self.holding.payload_fetch_failed,
            TaskFinished: self.worker.task_finished,
            TaskStarted: self.worker.task_started,
            ResultRequested: self.delivery.result_requested,
            ResultCollected: self.delivery.result_collected,
            JournalReplayed: self.holding.journal_replayed,
        }

    @property
    def running(self) -> dict[TaskId, tuple[int, int]]:
        """Task -> (attempt, view) of each run started on this node (``worker.py``)."""
        return self.worker.running

    # --- Component interface ------------------------------------------------------------

    def next_deadline(self) -> float:
        """When this component needs a Tick (one rule: :meth:`deadline_source`'s)."""
        return self.deadline_source()()

    def deadline_source(self) -> Callable[[], float]:
        """The deadline rule, as a callable the node asks after every event: in a mesh
        without tasks the table's ``len`` and ``has_runs`` were three Python calls of the
        four. It reads the table's entry dict and the tombstone
        runs directly (read only; both objects live as long as this component and are
        never replaced), and tests ``_sync_at`` before the runs (both side-effect free)."""
        entries = self.table._entries
        runs = self.table.collected._runs

        def deadline() -> float:
            deadline = self._tick_at
            if self.schedule_at < deadline:
                deadline = self.schedule_at
            if entries:
                if self.mesh.leader() != self.known_leader:
                    return self.context.now  # hand the open entries over at once (sync.py)
                if self._sync_at < deadline:
                    deadline = self._sync_at
            elif self._sync_at < deadline and runs and any(runs.values()):
                deadline = self._sync_at
            return deadline

        return deadline

    def on_tick(self, now: float) -> None:
        self._check_leader(now)
        if now >= self._sync_at:
            self._sync_at = now + self.config.sync_interval_s
            self.sync.send_round()
            self.orphans.check(now, self.delivery.watched)
            self.delivery.ask_for_unheard()
        if now >= self._tick_at or now >= self.schedule_at:
            self._housekeeping(now)
        self._finish(now)

    def on_event(self, event: object, now: float) -> bool:
        handler = self._event_handlers.get(type(event))
        if handler is None:
            return False
        self._check_leader(now)
        handler(event, now)
        self._finish(now)
        return True

    def on_message(self, envelope: Envelope, message: Message, source: Address, now: float) -> None:
        self._check_leader(now)
        if isinstance(message, TaskUpdate):
            self.sync.on_update(message, source, now, envelope.sender)
        elif isinstance(message, HoldRequest):
            self.holding.on_hold_request(message, source, now)
        elif isinstance(message, TaskDigest):
            self.sync.on_digest(message, source, now)
        elif isinstance(message, TaskWant):
            self.sync.on_want(message, source)
        self._finish(now)

    def on_members_joined(self, infos: list[MemberInfo]) -> None:
        # on_member_changed(info, None) of each: the same for every live member.
        if infos and len(self.table) and self.queue:
            self.schedule_at = min(self.schedule_at, self.context.now)

    def on_member_changed(self, info: MemberInfo, previous: MemberInfo | None) -> None:
        now = self.context.now
        if not len(self.table):
            return  # nothing queued, assigned or held: membership changes cost nothing
        if info.state in LIVE_STATES:
            if self.queue:
                self.schedule_at = min(self.schedule_at, now)
            return
        book = self.book
        for tid in sorted(book.open):  # sorted: set order varies between processes
            entry = self.table.get(tid)
            if entry and entry.state.phase is Phase.ASSIGNED and entry.state.worker == info.node_id:
                self.queue.push(tid, entry.spec.priority)
                facts = book.get(tid)
                if facts is not None and facts.orphaned_at is None:
                    facts.orphaned_at = now
                    # Its run tells nothing of the inputs now: a wait for them that this
                    # attempt was to end begins anew (requeue does so when the state
                    # changes; here it does not), else the wait's old clock fails the
                    # task as it is queued again, its holders live.
                    facts.inputs_wanted_since, facts.input_waits = None, 0
        self.orphans.adopt_gone_origins(now)
        self.replication.member_gone(info.node_id)
        self.repair_at = min(self.repair_at, now)
        self.schedule_at = min(self.schedule_at, now)
        self._arm_tick(now)

    def on_driver_load(self, load: LoadVector, now: float) -> None:
        """The driver's own measurements (utilisation, memory, capabilities, and capacity
        as ``active_tasks + free_slots``); the task fields are filled in before gossip."""
        self.own_load.set_driver_load(load)
        self._publish_load(now)

    # --- the table and reactions to its changes -------------------------------------------

    def merge(self, entry: TaskEntry, now: float, local: bool) -> TaskEntry | None:
        """Merge ``entry`` into the local table and react to the change, if any."""
        outcome = self.table.merge(entry)
        if outcome.after is not None and outcome.changed:
            self._on_change(outcome.before, outcome.after, now, local)
        return outcome.after

    def merge_remote(self, entry: TaskEntry, now: float, local: bool = False) -> TaskEntry | None:
        """Merge a peer's entry (used by :class:`~meshgpu.core.tasks.sync.TableSync`)."""
        return self.merge(entry, now, local)

    def forget_entry(self, entry: TaskEntry, persist: bool) -> None:
        """Drop local state of a collected entry (used by the sync on tombstones)."""
        self._forget(entry, persist)

    def update(self, tid: TaskId, now: float, **changes: Any) -> None:
        """A local change of ``tid``'s entry (fields of :class:`TaskEntry`), and the
        reaction to it."""
        outcome = self.table.update(tid, **changes)
        if outcome.after is not None and outcome.changed:
            self._on_change(outcome.before, outcome.after, now, local=True)

    def set_acknowledged(self, tid: TaskId, now: float) -> None:
        """The origin acknowledged the submission: from now on the leader may assign it
        (used by :class:`~meshgpu.core.tasks.replication.Replicator`)."""
        self.update(tid, now, acknowledged=True)

    def mark_delivered(self, tid: TaskId, now: float) -> None:
        """Set the delivered mark (used by :class:`~meshgpu.core.tasks.orphans.Orphans` for
        an outcome nobody will ever collect)."""
        self.update(tid, now, delivered=True)

    def set_state(self, tid: TaskId, state: TaskState, now: float) -> None:
        """A local state transition (used by the leader role)."""
        self.update(tid, now, state=state)

    def failure_state(self, entry: TaskEntry, reason: str) -> TaskState:
        """The state after the current attempt failed transiently (``worker.py``)."""
        return failure_state(entry, reason)

    def maybe_resolve(self, entry: TaskEntry) -> None:
        """Tell this node's client about a finished task, once (``delivery.py``)."""
        self.delivery.maybe_resolve(entry)

    def _on_change(
        self, before: TaskEntry | None, after: TaskEntry, now: float, local: bool
    ) -> None:
        tid = after.task_id
        self.sync.note_change(after)
        if local:
            mark = mark_only(before, after)
            if tid in self._outbox and self._marks.get(tid) != mark:
                mark = None  # more than one kind of change in this handler
            self._marks[tid] = mark
            self._outbox[tid] = after
            if before is not None and before.state.worker not in (None, after.state.worker):
                # The task moves away from that worker: it must hear it to cancel its run.
                self._notify.setdefault(tid, set()).add(before.state.worker)
        self.orphans.on_change(after)
        book = self.book
        facts = book.get(tid)
        if before is None or facts is None:
            facts = book.seen(tid, now)
        state = after.state
        if before is None or before.state != state:
            facts.state_since = now
            observe_outcome(self, before, after, now)
            requeue(self, after, now)
            self.worker.on_state_change(after)
            if before is not None and before.state.phase is Phase.ASSIGNED:
                self.schedule_at = min(self.schedule_at, now)  # a slot may have freed
        if after.acknowledged and (before is None or not before.acknowledged):
            facts.acknowledged_at = now
            self.schedule_at = min(self.schedule_at, now)  # assignable from now on
        if before is not None and after.state.epoch > before.state.epoch:
            # The result was lost: resolve the re-run's outcome from now on.
            self.delivery.resolved.discard(tid)
        if (
            state.phase is Phase.DONE
            and not after.delivered
            and (before is None or before.state != state)
            and after.result_holders.isdisjoint(self.mesh.live_members())
        ):
            self.repair_at = min(self.repair_at, now)  # its result may be lost already
        if self.node_id in after.holders and not self.replaying:
            self.context.emit(Persist(TaskRecord(tid, after)))
        self.holding.drop_delivered(after)
        self.replication.on_change(after)
        self.delivery.maybe_resolve(after)
        if after.collectable and tid not in book.collect_at:
            book.collect_at[tid] = now + self.config.gc_delay_s
        self._arm_tick(now)
        if after.steal is not None and (
            before is None or before.steal != after.steal or before.state != state
        ):
            self.worker.on_steal_request(after, now)  # the victim decides (worker.py)
        if (
            not local
            and not after.acknowledged
            and tid.origin == self.node_id
            and tid not in self.replication
            and not self.replaying
        ):
            # Our own submission from an earlier life, never acknowledged: an orphan.
            self.orphans.adopt(tid, now)

    # --- periodic work --------------------------------------------------------------------

    def hold_request(self, node_id: NodeId, entry: TaskEntry) -> None:
        """Ask ``node_id`` to become a holder of ``entry`` (used by the leader's repair)."""
        member = self.mesh.members().get(node_id)
        if member is not None:
            self.send(member.address, HoldRequest(entry))

    def _arm_tick(self, now: float) -> None:
        # Brought earlier, never later: a tick set for a load's later publication time
        # (_publish_load) must not hold back replication, collection or repair.
        if self._tick_at > now + self.config.tick_interval_s and (
            self.book.open
            or self.replication
            or self.book.collect_at
            or (self.repair_at < math.inf and self.mesh.leader() == self.node_id)
        ):
            self._tick_at = now + self.config.tick_interval_s
        elif self._tick_at == math.inf and self.own_load.dirty:
            self._tick_at = max(now, self.own_load.due(self.context.cluster_size))

    def _housekeeping(self, now: float) -> None:
        if now >= self._tick_at:
            self._tick_at = math.inf
            self.replication.tick(now)
            for tid, due in list(self.book.collect_at.items()):
                if now >= due:
                    self.collect(tid, persist=True)
        self.schedule_at = math.inf
        self.leading.run(now)
        self._publish_load(now)
        self._arm_tick(now)

    def collect(self, tid: TaskId, persist: bool) -> None:
        """Garbage-collect ``tid``: a tombstone in the table, every local index dropped."""
        entry = self.table.collect(tid)
        if entry is not None:
            self._forget(entry, persist)

    def _forget(self, entry: TaskEntry, persist: bool) -> None:
        tid = entry.task_id
        self.context.count("tasks_collected")
        if persist and self.node_id in entry.holders and not self.replaying:
            self.context.emit(Persist(TaskRecord(tid, None)))
        holding = self.holding
        if self.node_id in entry.holders and tid not in holding.dropped:
            self.context.emit(DropPayload(tid, entry.spec.input_digest))
        self.book.forget(tid)
        self.delivery.forget(tid)
        for group in (holding.dropped, holding.fetching):
            group.discard(tid)
        self._outbox.pop(tid, None)
        self._notify.pop(tid, None)
        self._marks.pop(tid, None)
        self.unconfirmed.discard(tid)
        self.orphans.forget(tid)
        self.sync.forget(tid)
        self.queue.forget(tid)
        self.worker.cancel(tid)

    def capacity(self) -> int:
        """How many tasks this node runs at once (driver's figure, else the config's)."""
        return self.own_load.capacity()

    def _publish_load(self, now: float) -> None:
        if not self.own_load.dirty:
            return
        due = self.own_load.due(self.context.cluster_size)
        if now < due:
            self._tick_at = min(self._tick_at, due)
            return
        if self.own_load.urgent:
            self.context.count("loads_published_at_once")
        self.context.count("loads_published")
        self.mesh.publish_load(self.own_load.publish(len(self.worker.running), now))

    # --- sending ----------------------------------------------------------------------------

    def send(self, address: Address, message: Message) -> None:
        """Send one task-protocol datagram, counting it and its bytes (``task_datagrams_sent``,
        ``task_bytes_sent``: the figures behind ``messages_per_task`` in the simulator)."""
        context = self.context
        effect = context.send(address, message)
        context.count("task_datagrams_sent")
        context.count("task_bytes_sent", len(effect.payload))

    def _finish(self, now: float) -> None:
        """End of a handler: send what changed here to the nodes involved in it."""
        if self.own_load.dirty:
            self._publish_load(now)
        if not self._outbox:
            return
        entries = list(self._outbox.values())
        self._outbox.clear()
        notify, marks = self._notify, self._marks
        self._notify, self._marks = {}, {}
        self.sync.send_changes(entries, notify, marks)

    # --- leadership -----------------------------------------------------------------------

    def _check_leader(self, now: float) -> None:
        """Hand over when the leader this node believes in changed: push our open entries to
        a new leader, or, as the new leader, confirm the copies we may hold stale."""
        leader = self.mesh.leader()
        if leader == self.known_leader:
            return
        previous = self.known_leader
        self.known_leader = leader
        if previous == self.node_id:
            self.unconfirmed.clear()
        if leader is None:
            return
        if leader == self.node_id:
            self.handed_over = set()
            self.sync.confirm_as_leader()
        else:
            self.sync.hand_over(leader)
        self.schedule_at = min(self.schedule_at, now)

    def confirm(self, tid: TaskId, now: float) -> None:
        """A peer sent its copy of ``tid``: as leader, this node's copy is current again."""
        if tid in self.unconfirmed:
            self.unconfirmed.discard(tid)
            self.schedule_at = min(self.schedule_at, now)

    def is_current(self, entry: TaskEntry) -> bool:
        """Whether the leader may act on its copy of ``entry`` (see ``confirm_as_leader``)."""
        return entry.task_id not in self.unconfirmed or keeps_current(entry, self.node_id)

    # --- read-only views for drivers, status and checkers ---------------------------------

    def entries(self) -> dict[TaskId, TaskEntry]:
        """A copy of the local table."""
        return self.table.snapshot()
