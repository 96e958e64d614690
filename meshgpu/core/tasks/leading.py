"""The leader's duties for the task queue.

Only the node that believes it leads the current view acts here; every other node keeps
the same queue and indices (see ``component.py``), so leadership moves with no hand-over
message and nothing to rebuild: the new leader's first round (at most ``tick_interval_s``
after it learns it leads) assigns from its own replica of the table.

Each round:

1. deadlines: a task older than ``spec.deadline_s`` (since this node first saw it) fails
   with "deadline exceeded";
2. assignment timeouts: an assignment older than ``assignment_timeout_s`` counts as a
   failed attempt (retried, or FAILED once the retry policy is exhausted);
3. orphans: a task ASSIGNED to a worker that is no longer live is queued again (done when
   the member change arrives, see ``TaskComponent.on_member_changed``);
Only the nodes involved in a task hear its changes (``interest.py``), so a new leader's
copy of a task it is not involved in may be stale (from an earlier term of its own): such
an entry is left alone (not assigned, timed out, repaired, nor counted against its worker's
slots) until a holder confirmed it (``TaskComponent.is_current``; ``sync.py``).

4. assignment: queued tasks that are acknowledged (held by ``replicas`` nodes, or by
   every live node when fewer exist), whose retry back-off has passed and one of whose
   holders is live go through :func:`~meshgpu.core.tasks.scheduler.plan_round` with a
   view of every live worker. A task none of whose holders is live waits for one
   (assigning it would only have its worker find no inputs), and fails once it waited
   ``input_wait_s`` for its inputs (docs/task-queue.md, "Waiting for the inputs");
5. with work stealing on: steal requests for tasks queued, not started, on busy workers
   while a capable worker sits idle (:mod:`~meshgpu.core.tasks.stealing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.scheduler import QueuedTask, plan_round
from meshgpu.core.tasks.spec import DeviceRequirements, Priority, TaskId
from meshgpu.core.tasks.state import Phase
from meshgpu.core.tasks.stealing import AssignedTask, plan_steals
from meshgpu.core.tasks.strategies import WorkerView
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.types import NodeId

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent

MAX_ASSIGNMENT_LOG = 100_000
"""Assignment records kept for invariant checkers and status (oldest dropped first)."""


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    """One assignment this node made as leader (what invariant 9 is checked against)."""

    time: float
    view: int
    task_id: TaskId
    priority: Priority
    requirements: DeviceRequirements
    worker: NodeId
    ready_since: float


class Leading:
    """Leader-side logic over a :class:`TaskComponent`'s state."""

    def __init__(self, component: TaskComponent) -> None:
        self.component = component

    def run(self, now: float) -> None:
        """One leader round at ``now`` (does nothing unless this node leads)."""
        tasks = self.component
        mesh = tasks.mesh
        if mesh.leader() != tasks.node_id:
            return
        live = set(mesh.live_members())
        if now >= tasks.repair_at:
            self._repair_replicas(now, live)
        self._expire_and_time_out(now, live)
        self._assign(now, live)
        if tasks.config.work_stealing:
            self._steal(now, live)

    def _assign(self, now: float, live: set[NodeId]) -> None:
        """Assign the queued tasks that are ready (step 4 of the module docstring)."""
        tasks = self.component
        mesh = tasks.mesh
        queued, ready_since = self._ready_tasks(now, live)
        if not queued:
            return
        workers = self._worker_views(now, live)
        queued = self._fail_unsatisfiable(queued, workers, live, now)
        view = mesh.view
        plan = plan_round(queued, workers, tasks.config.strategy, tasks.selection)
        for assignment in plan:
            entry = tasks.table.get(assignment.task_id)
            if entry is None or entry.state.terminal:
                continue
            tasks.set_state(
                assignment.task_id, st.assign(entry.state, view, assignment.worker), now
            )
            tasks.breakers[assignment.worker].on_assigned(now)
            tasks.context.count("tasks_assigned")
            log = tasks.assignment_log
            log.append(
                AssignmentRecord(
                    now,
                    view,
                    assignment.task_id,
                    entry.spec.priority,
                    entry.spec.requirements,
                    assignment.worker,
                    ready_since[assignment.task_id],
                )
            )
            if len(log) > MAX_ASSIGNMENT_LOG:
                del log[: len(log) - MAX_ASSIGNMENT_LOG]

    def _steal(self, now: float, live: set[NodeId]) -> None:
        """Ask busy workers to hand tasks they have not started to idle ones (``stealing.py``):
        the request is the entry's steal mark; the victim makes the move, or refuses."""
        tasks = self.component
        book = tasks.book
        assigned: list[AssignedTask] = []
        for tid in sorted(book.open):
            entry = tasks.table.get(tid)
            if entry is None or not tasks.is_current(entry):
                continue
            state = entry.state
            if state.phase is not Phase.ASSIGNED or state.worker not in live:
                continue
            request = entry.steal
            assigned.append(
                AssignedTask(
                    tid,
                    entry.spec,
                    state.worker,
                    state.attempt,
                    entry.started >= state.attempt,
                    request is not None and request[0] == state.attempt,
                    book.state_since(tid, now),
                )
            )
        if not assigned:
            return
        workers = self._worker_views(now, live)  # requested steals count for their thieves
        settled = now - tasks.config.tick_interval_s
        for steal in plan_steals(assigned, workers, settled):
            tasks.context.count("steals_requested")
            tasks.update(steal.task_id, now, steal=(steal.attempt, steal.thief))

    def _fail_unsatisfiable(
        self, queued: list[QueuedTask], workers: list[WorkerView], live: set[NodeId], now: float
    ) -> list[QueuedTask]:
        """Fail at once the tasks whose required labels no live node carries, naming the
        requirement, rather than leaving them queued until a deadline. Only judged once
        every live node has gossiped a load (its labels): a node that joined a moment ago
        and has not reported yet may be the one that satisfies."""
        if not any(task.spec.requirements.require for task in queued):
            return queued
        tasks = self.component
        loads = tasks.mesh.loads()
        if any(loads.get(n) is None or loads[n].version == 0 for n in live):
            return queued
        kept: list[QueuedTask] = []
        for task in queued:
            req = task.spec.requirements
            if not req.require or any(not req.unmet(w.labels) for w in workers):
                kept.append(task)
                continue
            entry = tasks.table.get(task.task_id)
            if entry is None or entry.state.terminal:
                continue
            reason = req.unsatisfiable_reason()
            tasks.context.count("tasks_unsatisfiable")
            tasks.set_state(task.task_id, st.fail(entry.state, reason, count_failure=False), now)
        return kept

    def _repair_replicas(self, now: float, live: set[NodeId]) -> None:
        """After a member died: re-run undelivered DONE tasks whose result holders are all
        dead, and ask live nodes to hold the undelivered tasks that are down
        to fewer live holders than their ``replicas`` (never below one surviving holder:
        with none, there is nothing left to copy). Checked again after
        ``replication_timeout_s`` until every such task is back to strength."""
        tasks = self.component
        tasks.repair_at = float("inf")
        short = False
        for task_id in tasks.table.ids():
            entry = tasks.table.get(task_id)
            if entry is None or entry.delivered or not tasks.is_current(entry):
                continue
            holding = entry.holders & live
            if (
                entry.state.phase is Phase.DONE
                and holding
                and entry.result_holders.isdisjoint(live)
            ):
                # DONE is no dead end: with every copy of the undelivered result gone and
                # the inputs still held, run it again (a new epoch, see state.py).
                gone = ", ".join(sorted(entry.result_holders))
                tasks.context.count("results_lost")
                reason = f"result lost: every result holder ({gone}) is dead"
                tasks.set_state(task_id, st.lose_result(entry.state, reason), now)
                entry = tasks.table.get(task_id)
                if entry is None:
                    continue
            wanted = min(entry.spec.replicas, len(live))
            if not holding or len(holding) >= wanted:
                continue
            short = True
            candidates = sorted(live - entry.holders)
            tasks.rng.shuffle(candidates)
            for node_id in candidates[: wanted - len(holding)]:
                tasks.context.count("replica_repairs")
                tasks.hold_request(node_id, entry)
        if short:
            tasks.repair_at = now + tasks.config.replication_timeout_s

    def _expire_and_time_out(self, now: float, live: set[NodeId]) -> None:
        tasks = self.component
        book = tasks.book
        timeout = tasks.config.assignment_timeout_s
        for tid in sorted(book.open):
            entry = tasks.table.get(tid)
            if entry is None or entry.state.terminal or not tasks.is_current(entry):
                continue
            state = entry.state
            deadline = entry.spec.deadline_s
            if deadline is not None and now - book.first_seen(tid, now) >= deadline:
                tasks.context.count("tasks_expired")
                tasks.set_state(tid, st.expire(state), now)
            elif (
                state.phase is Phase.ASSIGNED
                and state.worker in live
                and now - book.state_since(tid, now) >= timeout
            ):
                tasks.context.count("assignment_timeouts")
                reason = f"assignment timed out on {state.worker} after {timeout:g} s"
                tasks.set_state(tid, tasks.failure_state(entry, reason), now)

    def _ready_tasks(
        self, now: float, live: set[NodeId]
    ) -> tuple[list[QueuedTask], dict[TaskId, float]]:
        tasks = self.component
        book = tasks.book
        queued: list[QueuedTask] = []
        ready_since: dict[TaskId, float] = {}
        next_retry = float("inf")
        waited_out: list[TaskId] = []
        for tid in tasks.queue:
            entry = tasks.table.get(tid)
            if entry is None or entry.state.terminal:
                tasks.queue.forget(tid)
                continue
            state = entry.state
            if not entry.acknowledged or not tasks.is_current(entry):
                # Still being replicated: a result stored now would miss the holders that
                # replication adds later. Stays queued; the acknowledgement schedules. (Or
                # a copy from an earlier term not confirmed yet: its confirmation schedules.)
                continue
            since = max(book.state_since(tid, now), book.acknowledged_at(tid, now))
            if state.phase is Phase.RETRYING:
                ready = book.retry_at(tid, now)
                if ready > now:
                    next_retry = min(next_retry, ready)
                    continue
                since = ready
            elif state.phase is Phase.ASSIGNED:
                if state.worker in live:
                    tasks.queue.remove(tid)
                    continue
                since = book.orphaned_at(tid, since)
            if self._waits_for_inputs(entry, now, live, waited_out):
                continue
            queued.append(QueuedTask(tid, entry.spec, avoid=state.worker, holders=entry.holders))
            ready_since[tid] = since
        tasks.schedule_at = min(tasks.schedule_at, next_retry)
        for tid in waited_out:
            self._fail_for_inputs(tid, now, live)
        return queued, ready_since

    def _waits_for_inputs(
        self, entry: TaskEntry, now: float, live: set[NodeId], waited_out: list[TaskId]
    ) -> bool:
        """Whether the queued ``entry`` must wait for its inputs rather than be assigned: none
        of its holders is live (a restarting daemon is declared dead until it is seen
        again), or a worker found none that served them and ``input_wait_s`` has passed
        since the wait began (then it joins ``waited_out``, to fail). A wait no worker
        reported ends when a holder is live again."""
        facts = self.component.book.get(entry.task_id)
        no_holder = entry.holders.isdisjoint(live)
        if facts is None:
            return no_holder
        since = facts.inputs_wanted_since
        if not no_holder and facts.input_waits == 0:
            # No worker reported the inputs unavailable: a wait begun because no holder
            # was live ends when one is. What keeps the task queued now (a backlog, no
            # capable worker) is no fault of its inputs.
            facts.inputs_wanted_since = None
            return False
        if since is None:
            if not no_holder:
                return False
            since = facts.inputs_wanted_since = now
        if now - since >= self.component.config.input_wait_s:
            waited_out.append(entry.task_id)
            return True
        return no_holder

    def _fail_for_inputs(self, tid: TaskId, now: float, live: set[NodeId]) -> None:
        """``tid`` waited ``input_wait_s`` for a holder to serve its inputs: it fails, and
        the reason says what became of each holder (or what the last worker found)."""
        tasks = self.component
        entry = tasks.table.get(tid)
        if entry is None or entry.state.terminal:
            return
        waited = f"inputs unavailable for {tasks.config.input_wait_s:g} s"
        if entry.holders.isdisjoint(live):
            members = tasks.mesh.members()
            gone = ", ".join(
                f"{h} {members[h].state.value if h in members else 'unknown'}"
                for h in sorted(entry.holders)
            )
            reason = f"{waited}: no holder of them is live ({gone})"
        else:
            reason = f"{waited}: {entry.state.reason or 'no holder served them'}"
        tasks.context.count("tasks_inputs_unavailable")
        tasks.set_state(tid, st.fail(entry.state, reason, count_failure=False), now)

    def _worker_views(self, now: float, live: set[NodeId]) -> list[WorkerView]:
        tasks = self.component
        in_flight: dict[NodeId, int] = {}
        for tid in tasks.book.open:
            entry = tasks.table.get(tid)
            if (
                entry is not None
                and entry.state.phase is Phase.ASSIGNED
                and tasks.is_current(entry)
            ):
                worker = entry.state.worker
                if worker is not None:
                    in_flight[worker] = in_flight.get(worker, 0) + 1
                request = entry.steal
                if (
                    request is not None
                    and request[0] == entry.state.attempt
                    and request[1] != worker
                    and entry.started < request[0]
                ):
                    # Requested, not answered yet: the thief's slot is spoken for (a
                    # started attempt is refused, so the request no longer counts).
                    in_flight[request[1]] = in_flight.get(request[1], 0) + 1
        loads = tasks.mesh.loads()
        handed_over = tasks.handed_over
        views: list[WorkerView] = []
        for node_id in sorted(live):
            load = loads.get(node_id)
            if load is not None and node_id != tasks.node_id and node_id not in handed_over:
                # No hand-over from that worker yet (this node leads since recently): its
                # running tasks may be missing from the table, so trust its gossiped count.
                in_flight[node_id] = max(in_flight.get(node_id, 0), load.active_tasks)
            if load is None or load.version == 0:
                capacity = tasks.capacity() if node_id == tasks.node_id else tasks.config.slots
                views.append(
                    WorkerView(
                        node_id,
                        capacity,
                        in_flight.get(node_id, 0),
                        admits=tasks.breakers[node_id].admits(now),
                    )
                )
                continue
            caps = load.capabilities
            views.append(
                WorkerView(
                    node_id,
                    load.active_tasks + load.free_slots,
                    in_flight.get(node_id, 0),
                    utilisation=load.utilisation,
                    memory_used=load.memory_used,
                    memory_total=max(load.memory_total, caps.memory_total),
                    queue_length=load.queue_length,
                    device_types=caps.device_types,
                    fp16=caps.fp16,
                    latency_estimates=load.latency_estimates,
                    admits=tasks.breakers[node_id].admits(now),
                    labels=load.labels,
                )
            )
        return views
