"""The task queue as a node component: every role a node plays for a task.

One class, because every role reacts to the same thing, a change of an entry of the local
table (``_on_change``), whether it came from a local action, a peer's update, or the
journal:

* **origin**: accepts a submission, replicates it to ``replicas`` holders, acknowledges;
* **holder**: fetches and keeps the inputs, journals the entry (``Persist``), drops the
  payload once delivered;
* **leader** (:mod:`meshgpu.core.tasks.leading`): expires deadlines, times out and
  reassigns, runs scheduling rounds;
* **worker**: runs what is assigned to it, reports the outcome;
* **client side**: resolves a task to its client once, marks it delivered.

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
from typing import Any, Protocol

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.effects import (
    CancelTask,
    DropPayload,
    FetchPayload,
    Persist,
    RunTask,
    TaskRejected,
    TaskResolved,
)
from meshgpu.core.events import (
    JournalReplayed,
    PayloadFetchFailed,
    PayloadStored,
    ResultCollected,
    ResultRequested,
    SubmitTask,
    TaskFinished,
)
from meshgpu.core.load import LoadVector
from meshgpu.core.membership import LIVE_STATES, MemberInfo
from meshgpu.core.messages import Envelope, Message
from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.adaptive import LatencyModel
from meshgpu.core.tasks.breaker import BreakerBoard
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.interest import keeps_current, mark_only
from meshgpu.core.tasks.leading import AssignmentRecord, Leading
from meshgpu.core.tasks.messages import HoldRequest, TaskDigest, TaskUpdate, TaskWant
from meshgpu.core.tasks.orphans import Orphans
from meshgpu.core.tasks.own_load import OwnLoad
from meshgpu.core.tasks.queue import TaskQueue
from meshgpu.core.tasks.records import TaskRecord
from meshgpu.core.tasks.replication import Replicator
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.state import Phase, TaskState
from meshgpu.core.tasks.strategies import STRATEGIES, SelectionContext
from meshgpu.core.tasks.sync import TableSync
from meshgpu.core.tasks.table import TaskEntry, TaskTable
from meshgpu.core.types import Address, NodeId

SEQUENCE_BASE_BITS = 40
"""Each start draws its first sequence number from [0, 2**40) x 2**20: a restarted node
(with or without its journal) never reuses a task id still alive elsewhere."""


class MeshView(Protocol):
    """What the task queue reads from its node (:class:`meshgpu.core.node.Node`)."""

    @property
    def view(self) -> int: ...

    def leader(self) -> NodeId | None: ...

    def live_members(self) -> list[NodeId]: ...

    def members(self) -> dict[NodeId, MemberInfo]: ...

    def loads(self) -> dict[NodeId, LoadVector]: ...

    def publish_load(self, load: LoadVector) -> None: ...


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
        self.leading = Leading(self)
        self.active: set[TaskId] = set()
        self.first_seen: dict[TaskId, float] = {}
        self.acknowledged_at: dict[TaskId, float] = {}
        self.state_since: dict[TaskId, float] = {}
        self.retry_at: dict[TaskId, float] = {}
        self.orphaned_at: dict[TaskId, float] = {}
        self.assigned_seen: dict[TaskId, dict[int, float]] = {}
        self.running: dict[TaskId, tuple[int, int]] = {}
        self._next_sequence = self.rng.getrandbits(SEQUENCE_BASE_BITS) << 20
        self._first_sequence = self._next_sequence
        self.replication = Replicator(self)
        self._fetching: set[TaskId] = set()
        self._resolved: set[TaskId] = set()
        self._watched: set[TaskId] = set()
        self._dropped: set[TaskId] = set()
        self._gc_at: dict[TaskId, float] = {}
        self._outbox: dict[TaskId, TaskEntry] = {}
        self._notify: dict[TaskId, set[NodeId]] = {}
        self._marks: dict[TaskId, str | None] = {}
        self._leader: NodeId | None = None
        self.unconfirmed: set[TaskId] = set()
        self.handed_over: set[NodeId] = set()
        self.orphans = Orphans(self)
        self._replaying = False
        self.sync = TableSync(self)
        self._sync_at = now + self.rng.uniform(0.0, config.sync_interval_s)
        self._tick_at = math.inf
        self.schedule_at = math.inf
        self.repair_at = math.inf
        self.own_load = OwnLoad(config)
        self.assignment_log: list[AssignmentRecord] = []

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
                if self.mesh.leader() != self._leader:
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
            self.orphans.check(now, self._watched)
            watched = [
                t for t in self._watched if t not in self._resolved and not self._hears_of(t)
            ]
            if watched:
                self.sync.ask_for_watched(sorted(watched))
        if now >= self._tick_at or now >= self.schedule_at:
            self._housekeeping(now)
        self._finish(now)

    def on_event(self, event: object, now: float) -> bool:
        handler = _EVENT_HANDLERS.get(type(event))
        if handler is None:
            return False
        self._check_leader(now)
        handler(self, event, now)
        self._finish(now)
        return True

    def on_message(self, envelope: Envelope, message: Message, source: Address, now: float) -> None:
        self._check_leader(now)
        if isinstance(message, TaskUpdate):
            self.sync.on_update(message, source, now, envelope.sender)
        elif isinstance(message, HoldRequest):
            self._on_hold_request(message, source, now)
        elif isinstance(message, TaskDigest):
            self.sync.on_digest(message, source, now)
        elif isinstance(message, TaskWant):
            self.sync.on_want(message, source)
        self._finish(now)

    def on_member_changed(self, info: MemberInfo, previous: MemberInfo | None) -> None:
        now = self.context.now
        if not len(self.table):
            return  # nothing queued, assigned or held: membership changes cost nothing
        if info.state in LIVE_STATES:
            if self.queue:
                self.schedule_at = min(self.schedule_at, now)
            return
        for tid in sorted(self.active):  # sorted: set order varies between processes
            entry = self.table.get(tid)
            if entry and entry.state.phase is Phase.ASSIGNED and entry.state.worker == info.node_id:
                self.queue.push(tid, entry.spec.priority)
                self.orphaned_at.setdefault(tid, now)
        self.orphans.adopt_gone_origins(now)
        self.replication.member_gone(info.node_id)
        self.repair_at = min(self.repair_at, now)
        self.schedule_at = min(self.schedule_at, now)
        self._arm_tick(now)

    def on_driver_load(self, load: LoadVector, now: float) -> None:
        """The driver's own measurements (utilisation, memory, capabilities, and capacity
        as ``active_tasks + free_slots``); the task fields are filled in before gossip."""
        self.own_load.set_driver_load(load)
        self._publish_load(now, force=True)

    # --- events ---------------------------------------------------------------------------

    def _submit(self, event: SubmitTask, now: float) -> None:
        spec = event.spec
        if spec.strategy is not None and spec.strategy not in STRATEGIES:
            choices = ", ".join(sorted(STRATEGIES))
            self.context.emit(
                TaskRejected(event.client_ref, f"unknown strategy {spec.strategy!r}: use {choices}")
            )
            return
        task_id = TaskId(self.node_id, self._next_sequence)
        self._next_sequence += 1
        self.context.count("tasks_submitted")
        self._merge(TaskEntry(task_id, spec, holders=frozenset({self.node_id})), now, local=True)
        self.replication.start(task_id, event.client_ref, spec.replicas, now)

    def _payload_stored(self, event: PayloadStored, now: float) -> None:
        self._fetching.discard(event.task_id)
        if event.task_id in self.table:
            self._update(event.task_id, now, holders=frozenset({self.node_id}))

    def _payload_fetch_failed(self, event: PayloadFetchFailed, now: float) -> None:
        self._fetching.discard(event.task_id)
        self.context.count("payload_fetch_failures")

    def _task_finished(self, event: TaskFinished, now: float) -> None:
        tid = event.task_id
        attempt, view = self.running.get(tid, (event.attempt, 0))
        if attempt == event.attempt:
            self.running.pop(tid, None)
            self.own_load.dirty = True
        entry = self.table.get(tid)
        if entry is None or entry.state.phase is Phase.PENDING:
            # Collected already, or a report for an attempt this node never saw assigned
            # (a confused driver): nothing to record.
            self.context.count("task_reports_ignored")
            return
        current = entry.state
        if event.outcome == "ok" and event.result_holders:
            self.own_load.learn(entry.spec.model_digest, event.run_s)
            holders = frozenset(event.result_holders)
            if current.terminal:
                self.context.count(
                    "late_results" if current.phase is Phase.FAILED else "duplicate_results"
                )
                self._update(
                    tid, now, result_holders=holders if current.phase is Phase.DONE else frozenset()
                )
                return
            if current.phase is Phase.ASSIGNED and current.attempt == event.attempt:
                view = current.view
            done = st.complete(current, event.attempt, view, self.node_id)
            self._update(tid, now, state=done, result_holders=holders)
            return
        if current.terminal:
            return
        mine = (
            current.phase is Phase.ASSIGNED
            and current.attempt == event.attempt
            and current.worker == self.node_id
        )
        if event.outcome == "handed_back":
            # A graceful leave gives the attempt back: queued again at once, and it does
            # not count against the task's retry limit (nothing failed).
            if mine:
                self.context.count("tasks_handed_back")
                self._update(tid, now, state=st.hand_back(current, event.reason))
            return
        if event.outcome == "permanent_error":
            self._update(tid, now, state=st.fail(current, event.reason or "permanent error"))
            return
        reason = event.reason or "result could not be stored on any holder"
        if mine:
            self._update(tid, now, state=self.failure_state(entry, reason))

    def failure_state(self, entry: TaskEntry, reason: str) -> TaskState:
        """The state after the current attempt failed transiently: RETRYING, or FAILED once
        the retry policy is exhausted."""
        current = entry.state
        if entry.spec.retry.exhausted(current.failures + 1):
            attempts = current.failures + 1
            return st.fail(current, f"gave up after {attempts} failed attempts: {reason}")
        return st.retry(current, reason)

    def _result_requested(self, event: ResultRequested, now: float) -> None:
        tid = event.task_id
        if tid in self.table.collected:
            # Delivered and garbage-collected: say so rather than leave the client waiting.
            self.context.emit(TaskResolved(tid, "collected", "outcome already delivered", ()))
            return
        self._watched.add(tid)
        entry = self.table.get(tid)
        if entry is not None and entry.state.terminal and not entry.delivered:
            self._resolve(entry)
        elif not self._hears_of(tid):
            # This node may hold no copy, or a stale one (only the nodes involved in a task
            # hear its changes): ask for it now and on every sync round until resolved.
            self.sync.ask_for_watched([tid])

    def _result_collected(self, event: ResultCollected, now: float) -> None:
        self._watched.discard(event.task_id)
        if event.task_id in self.table:
            self._update(event.task_id, now, delivered=True)

    def _journal_replayed(self, event: JournalReplayed, now: float) -> None:
        self._replaying = True
        try:
            for record in event.records:
                if record.entry is None:
                    self._collect(record.task_id, persist=False)
                else:
                    self._merge(record.entry, now, local=False)
        finally:
            self._replaying = False
        self.context.count("journal_records_replayed", len(event.records))
        # Submissions of an earlier life that were never acknowledged: the replication
        # that would have acknowledged them died with it (see orphans.py).
        for tid in self.table.ids():
            entry = self.table.get(tid)
            if entry is not None and tid.origin == self.node_id and not entry.acknowledged:
                self.orphans.adopt(tid, now)

    # --- messages ---------------------------------------------------------------------------

    def _on_hold_request(self, message: HoldRequest, source: Address, now: float) -> None:
        entry = message.entry
        self._merge(entry, now, local=False)
        mine = self.table.get(entry.task_id)
        if mine is None:
            return
        if self.node_id in mine.holders:
            self.sync.send_entries(source, [mine], [], reply=False)
        elif entry.task_id not in self._fetching:
            self._fetching.add(entry.task_id)
            origin = entry.task_id.origin
            sources = sorted(mine.holders, key=lambda n: (n != origin, n))
            self.context.emit(FetchPayload(entry.task_id, entry.spec.input_digest, tuple(sources)))

    # --- the table and reactions to its changes -------------------------------------------

    def _merge(self, entry: TaskEntry, now: float, local: bool) -> TaskEntry | None:
        outcome = self.table.merge(entry)
        if outcome.after is not None and outcome.changed:
            self._on_change(outcome.before, outcome.after, now, local)
        return outcome.after

    def merge_remote(self, entry: TaskEntry, now: float, local: bool = False) -> TaskEntry | None:
        """Merge a peer's entry (used by :class:`~meshgpu.core.tasks.sync.TableSync`)."""
        return self._merge(entry, now, local)

    def forget_entry(self, entry: TaskEntry, persist: bool) -> None:
        """Drop local state of a collected entry (used by the sync on tombstones)."""
        self._forget(entry, persist)

    def _update(self, tid: TaskId, now: float, **changes: Any) -> None:
        outcome = self.table.update(tid, **changes)
        if outcome.after is not None and outcome.changed:
            self._on_change(outcome.before, outcome.after, now, local=True)

    def set_acknowledged(self, tid: TaskId, now: float) -> None:
        """The origin acknowledged the submission: from now on the leader may assign it
        (used by :class:`~meshgpu.core.tasks.replication.Replicator`)."""
        self._update(tid, now, acknowledged=True)

    def mark_delivered(self, tid: TaskId, now: float) -> None:
        """Set the delivered mark (used by :class:`~meshgpu.core.tasks.orphans.Orphans` for
        an outcome nobody will ever collect)."""
        self._update(tid, now, delivered=True)

    def set_state(self, tid: TaskId, state: TaskState, now: float) -> None:
        """A local state transition (used by the leader role)."""
        self._update(tid, now, state=state)

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
        if before is None:
            self.first_seen[tid] = now
        state = after.state
        if before is None or before.state != state:
            self.state_since[tid] = now
            self._observe_outcome(before, after, now)
            self._requeue(after, now)
            self._worker_role(after)
            if before is not None and before.state.phase is Phase.ASSIGNED:
                self.schedule_at = min(self.schedule_at, now)  # a slot may have freed
        if after.acknowledged and (before is None or not before.acknowledged):
            self.acknowledged_at[tid] = now
            self.schedule_at = min(self.schedule_at, now)  # assignable from now on
        if before is not None and after.state.epoch > before.state.epoch:
            self._resolved.discard(tid)  # the result was lost: resolve the re-run's outcome
        if (
            state.phase is Phase.DONE
            and not after.delivered
            and (before is None or before.state != state)
            and after.result_holders.isdisjoint(self.mesh.live_members())
        ):
            self.repair_at = min(self.repair_at, now)  # its result may be lost already
        if self.node_id in after.holders and not self._replaying:
            self.context.emit(Persist(TaskRecord(tid, after)))
        if after.delivered and self.node_id in after.holders and tid not in self._dropped:
            self._dropped.add(tid)
            self.context.emit(DropPayload(tid, after.spec.input_digest))
        self.replication.on_change(after)
        self.maybe_resolve(after)
        if after.collectable and tid not in self._gc_at:
            self._gc_at[tid] = now + self.config.gc_delay_s
        self._arm_tick(now)
        if (
            not local
            and not after.acknowledged
            and tid.origin == self.node_id
            and tid not in self.replication
            and not self._replaying
        ):
            # Our own submission from an earlier life, never acknowledged: an orphan.
            self.orphans.adopt(tid, now)

    def _observe_outcome(self, before: TaskEntry | None, after: TaskEntry, now: float) -> None:
        """Feed breakers and the adaptive model from state changes this node sees."""
        state = after.state
        model = after.spec.model_digest
        previous = None if before is None else before.state
        if (
            previous is not None
            and previous.phase is Phase.ASSIGNED
            and previous.worker is not None
            and previous.worker != state.worker
            and state.phase is Phase.ASSIGNED
        ):
            # Reassigned away (the worker died or timed out): a failure of that worker for
            # the breaker and the adaptive model, though not for the task's retry budget.
            self.breakers[previous.worker].on_failure(now)
            self.learned.observe_failure(previous.worker, model)
        if state.phase is Phase.ASSIGNED:
            attempts = self.assigned_seen.setdefault(after.task_id, {})
            if state.attempt not in attempts and state.worker is not None:
                attempts[state.attempt] = now
                if self._leader == self.node_id:
                    # Fairness counts only what this node sees as leader: it sees every
                    # assignment of its terms (and the open ones handed over), while as a
                    # plain node it would see every task it runs itself and few others,
                    # and as leader would then starve itself.
                    counts = self.selection.assigned
                    counts[state.worker] = counts.get(state.worker, 0) + 1
            return
        if state.worker is None or state.phase not in (Phase.DONE, Phase.RETRYING):
            return
        if st.is_hand_back(state):
            return  # a graceful leave: not a failure of the worker
        started = self.assigned_seen.get(after.task_id, {}).get(state.attempt)
        elapsed = None if started is None else now - started
        if state.phase is Phase.DONE:
            self.breakers[state.worker].on_success(now)
            if elapsed is not None:
                self.learned.observe_success(state.worker, model, elapsed)
        else:
            self.breakers[state.worker].on_failure(now)
            self.learned.observe_failure(state.worker, model)

    def _requeue(self, entry: TaskEntry, now: float) -> None:
        tid = entry.task_id
        state = entry.state
        if state.terminal:
            self.queue.forget(tid)
            self.active.discard(tid)
            self.retry_at.pop(tid, None)
            self.orphaned_at.pop(tid, None)
            self.assigned_seen.pop(tid, None)
            return
        self.active.add(tid)
        self.orphaned_at.pop(tid, None)
        if state.phase is Phase.ASSIGNED:
            self.retry_at.pop(tid, None)
            if state.worker in self.mesh.live_members():
                self.queue.remove(tid)
                return
            self.orphaned_at[tid] = now
        elif state.phase is Phase.RETRYING:
            if st.is_hand_back(state):
                self.retry_at[tid] = now  # nothing failed: no back-off
            else:
                self.retry_at[tid] = now + entry.spec.retry.delay(state.failures, self.rng)
        self.queue.push(tid, entry.spec.priority)
        self.schedule_at = min(self.schedule_at, now)

    def _worker_role(self, entry: TaskEntry) -> None:
        tid = entry.task_id
        state = entry.state
        running = self.running.get(tid)
        if running is not None:
            attempt = running[0]
            superseded = (
                state.terminal
                or state.attempt > attempt
                or (state.attempt == attempt and state.phase is Phase.RETRYING)
            )
            if superseded:
                del self.running[tid]
                self.own_load.dirty = True
                self.context.emit(CancelTask(tid, attempt))
                running = None
        if state.phase is Phase.ASSIGNED and state.worker == self.node_id and running is None:
            self.running[tid] = (state.attempt, state.view)
            self.own_load.dirty = True
            origin = tid.origin
            holders = tuple(sorted(entry.holders, key=lambda n: (n != origin, n)))
            self.context.count("tasks_started")
            self.context.emit(RunTask(tid, state.attempt, entry.spec, holders))

    def maybe_resolve(self, entry: TaskEntry) -> None:
        """Tell this node's client about a finished task, once, and never before the
        submission was acknowledged (the client learns the id from the acknowledgement)."""
        tid = entry.task_id
        if (
            entry.state.terminal
            and not entry.delivered
            and tid not in self._resolved
            and tid not in self.replication
            and (self._submitted_here(tid) or tid in self._watched)
        ):
            self._resolve(entry)

    def _hears_of(self, tid: TaskId) -> bool:
        """Whether this node hears every change of ``tid`` anyway (it holds, originated or
        runs it): a client waiting here for it needs no asking around (the daemon asks
        for every result its clients wait on, at the origin too)."""
        entry = self.table.get(tid)
        return entry is not None and keeps_current(entry, self.node_id)

    def _submitted_here(self, tid: TaskId) -> bool:
        """Whether a client submitted ``tid`` to this node in this life: only such a client
        (or one that asked here, ``_watched``) is attached here to be told the outcome. A
        submission of an earlier life is resolved only when its client asks again: an
        origin restarted without its data dir cannot know it already delivered it (the
        delivered mark may have died with it), and would deliver it twice."""
        return (
            tid.origin == self.node_id
            and self._first_sequence <= tid.sequence < self._next_sequence
        )

    def _resolve(self, entry: TaskEntry) -> None:
        self._resolved.add(entry.task_id)
        origin = entry.task_id.origin
        holders = tuple(sorted(entry.result_holders, key=lambda n: (n != origin, n)))
        self.context.emit(
            TaskResolved(entry.task_id, entry.state.phase.value, entry.state.reason, holders)
        )

    # --- periodic work --------------------------------------------------------------------

    def hold_request(self, node_id: NodeId, entry: TaskEntry) -> None:
        """Ask ``node_id`` to become a holder of ``entry`` (used by the leader's repair)."""
        member = self.mesh.members().get(node_id)
        if member is not None:
            self.send(member.address, HoldRequest(entry))

    def _arm_tick(self, now: float) -> None:
        if self._tick_at == math.inf and (
            self.active
            or self.replication
            or self._gc_at
            or self.own_load.dirty
            or (self.repair_at < math.inf and self.mesh.leader() == self.node_id)
        ):
            self._tick_at = now + self.config.tick_interval_s

    def _housekeeping(self, now: float) -> None:
        if now >= self._tick_at:
            self._tick_at = math.inf
            self.replication.tick(now)
            for tid, due in list(self._gc_at.items()):
                if now >= due:
                    self._collect(tid, persist=True)
        self.schedule_at = math.inf
        self.leading.run(now)
        self._publish_load(now)
        self._arm_tick(now)

    def _collect(self, tid: TaskId, persist: bool) -> None:
        entry = self.table.collect(tid)
        if entry is not None:
            self._forget(entry, persist)

    def _forget(self, entry: TaskEntry, persist: bool) -> None:
        tid = entry.task_id
        self.context.count("tasks_collected")
        if persist and self.node_id in entry.holders and not self._replaying:
            self.context.emit(Persist(TaskRecord(tid, None)))
        if self.node_id in entry.holders and tid not in self._dropped:
            self.context.emit(DropPayload(tid, entry.spec.input_digest))
        for index in (
            self.first_seen,
            self.acknowledged_at,
            self.state_since,
            self.retry_at,
            self.assigned_seen,
            self.orphaned_at,
        ):
            index.pop(tid, None)
        if tid in self._watched and tid not in self._resolved:
            # A client asked here for an outcome that was delivered and collected meanwhile.
            self.context.emit(TaskResolved(tid, "collected", "outcome already delivered", ()))
        for group in (self.active, self._resolved, self._watched, self._dropped, self._fetching):
            group.discard(tid)
        self._gc_at.pop(tid, None)
        self._outbox.pop(tid, None)
        self._notify.pop(tid, None)
        self._marks.pop(tid, None)
        self.unconfirmed.discard(tid)
        self.orphans.forget(tid)
        self.sync.forget(tid)
        self.queue.forget(tid)
        if tid in self.running:
            self.context.emit(CancelTask(tid, self.running.pop(tid)[0]))

    def capacity(self) -> int:
        """How many tasks this node runs at once (driver's figure, else the config's)."""
        return self.own_load.capacity()

    def _publish_load(self, now: float, force: bool = False) -> None:
        if not self.own_load.dirty:
            return
        if not force and now < self.own_load.due():
            self._tick_at = min(self._tick_at, self.own_load.due())
            return
        self.mesh.publish_load(self.own_load.publish(len(self.running), now))

    # --- sending ----------------------------------------------------------------------------

    def send(self, address: Address, message: Message) -> None:
        """Send one task-protocol datagram, counting it and its bytes (``task_datagrams_sent``,
        ``task_bytes_sent``: the figures behind ``messages_per_task`` in the simulator)."""
        context = self.context
        context.send(address, message)
        context.count("task_datagrams_sent")
        effect = context.effects[-1]
        context.count("task_bytes_sent", len(effect.payload))

    def _finish(self, now: float) -> None:
        """End of a handler: send what changed here to the nodes involved in it."""
        if self.own_load.dirty and now >= self.own_load.due():
            self._publish_load(now)
        if not self._outbox:
            return
        entries = list(self._outbox.values())
        self._outbox.clear()
        notify, marks = self._notify, self._marks
        self._notify, self._marks = {}, {}
        self.sync.send_changes(entries, notify, marks)

    # --- leadership and orphans ---------------------------------------------------------

    def _check_leader(self, now: float) -> None:
        """Hand over when the leader this node believes in changed: push our open entries to
        a new leader, or, as the new leader, confirm the copies we may hold stale."""
        leader = self.mesh.leader()
        if leader == self._leader:
            return
        previous = self._leader
        self._leader = leader
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


_EVENT_HANDLERS: dict[type, Any] = {
    SubmitTask: TaskComponent._submit,
    PayloadStored: TaskComponent._payload_stored,
    PayloadFetchFailed: TaskComponent._payload_fetch_failed,
    TaskFinished: TaskComponent._task_finished,
    ResultRequested: TaskComponent._result_requested,
    ResultCollected: TaskComponent._result_collected,
    JournalReplayed: TaskComponent._journal_replayed,
}


class NodeMeshView:
    """Adapts a :class:`meshgpu.core.node.Node` to :class:`MeshView` (no import cycle:
    the node is only duck-typed)."""

    def __init__(self, node: Any) -> None:
        self._node = node

    @property
    def view(self) -> int:
        view: int = self._node.view
        return view

    def leader(self) -> NodeId | None:
        leader: NodeId | None = self._node.leader()
        return leader

    def live_members(self) -> list[NodeId]:
        live: list[NodeId] = self._node.live_members()
        return live

    def members(self) -> dict[NodeId, MemberInfo]:
        members: dict[NodeId, MemberInfo] = self._node.table.members
        return members

    def loads(self) -> dict[NodeId, LoadVector]:
        loads: dict[NodeId, LoadVector] = self._node.loads()
        return loads

    def publish_load(self, load: LoadVector) -> None:
        self._node.load_gossip.set_own(load)
