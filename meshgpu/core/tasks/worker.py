"""The worker role: run what the leader assigned to this node and report how it went.

A change of a task's state may start a run here (ASSIGNED to this node, not running yet:
``RunTask``) or end one (a newer attempt, a retry or a terminal state superseded it:
``CancelTask``); the driver's ``TaskFinished`` report becomes the task's next state
(DONE with its result holders, RETRYING or FAILED by the retry policy, or handed back by
a graceful leave). Separate from the component because it is the one role whose state,
the attempts running here, the driver also sees (the load it publishes, the runs it
cancels); the leader's view of the same attempts is in ``leading.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshgpu.core.effects import CancelTask, RunTask
from meshgpu.core.events import TaskFinished, TaskStarted
from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.state import Phase, TaskState
from meshgpu.core.tasks.table import TaskEntry

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent


class Worker:
    """The attempts running on one node, and the reports of their outcomes."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.running: dict[TaskId, tuple[int, int]] = {}
        """Task -> (attempt, view) of each run started here and not finished yet."""

    def task_finished(self, event: TaskFinished, now: float) -> None:
        """The driver's report of one run: record its outcome in the table."""
        tasks = self.tasks
        tid = event.task_id
        attempt, view = self.running.get(tid, (event.attempt, 0))
        if attempt == event.attempt:
            self.running.pop(tid, None)
            tasks.own_load.dirty = True
        entry = tasks.table.get(tid)
        if entry is None or entry.state.phase is Phase.PENDING:
            # Collected already, or a report for an attempt this node never saw assigned
            # (a confused driver): nothing to record.
            tasks.context.count("task_reports_ignored")
            return
        current = entry.state
        if event.outcome == "ok" and event.result_holders:
            tasks.own_load.learn(entry.spec.model_digest, event.run_s)
            holders = frozenset(event.result_holders)
            if current.terminal:
                tasks.context.count(
                    "late_results" if current.phase is Phase.FAILED else "duplicate_results"
                )
                tasks.update(
                    tid, now, result_holders=holders if current.phase is Phase.DONE else frozenset()
                )
                return
            # A result adopted from a newer attempt (its holders refused this one's) is
            # that attempt's: DONE names the attempt the holders keep.
            kept = event.attempt if event.result_attempt is None else event.result_attempt
            if current.phase is Phase.ASSIGNED and current.attempt == kept:
                view = current.view
            done = st.complete(current, kept, view, tasks.node_id)
            tasks.update(tid, now, state=done, result_holders=holders)
            return
        if current.terminal:
            return
        mine = (
            current.phase is Phase.ASSIGNED
            and current.attempt == event.attempt
            and current.worker == tasks.node_id
        )
        if event.outcome == "handed_back":
            # A graceful leave gives the attempt back: queued again at once, and it does
            # not count against the task's retry limit (nothing failed).
            if mine:
                tasks.context.count("tasks_handed_back")
                tasks.update(tid, now, state=st.hand_back(current, event.reason))
            return
        if event.outcome == "inputs_unavailable":
            # The attempt never ran: not a failure of the task (its retry budget) nor of
            # the worker. The leader assigns it again once a holder can serve the inputs,
            # and fails it after ``input_wait_s`` if none can (leading.py).
            if mine:
                tasks.context.count("tasks_waiting_for_inputs")
                reason = event.reason or "no holder served the inputs"
                tasks.update(tid, now, state=st.wait_for_inputs(current, reason))
            return
        if event.outcome == "permanent_error":
            tasks.update(tid, now, state=st.fail(current, event.reason or "permanent error"))
            return
        reason = event.reason or "result could not be stored on any holder"
        if mine:
            tasks.update(tid, now, state=failure_state(entry, reason))

    def task_started(self, event: TaskStarted, now: float) -> None:
        """The driver put an attempt on the device: with work stealing on, mark it started
        in the table (the leader then never asks to steal it)."""
        tasks = self.tasks
        if not tasks.config.work_stealing:
            return
        entry = tasks.table.get(event.task_id)
        if entry is None or entry.started >= event.attempt:
            return
        state = entry.state
        if (
            state.phase is Phase.ASSIGNED
            and state.attempt == event.attempt
            and state.worker == tasks.node_id
        ):
            tasks.update(event.task_id, now, started=event.attempt)
            return
        # The attempt moved on before the driver reported its start: a run the core had
        # already cancelled (or handed to a thief) reached the device in the meantime.
        tasks.context.count("task_starts_superseded")

    def on_steal_request(self, entry: TaskEntry, now: float) -> None:
        """The leader asks this node to hand an attempt to an idle thief (``stealing.py``):
        done only if the attempt is still this node's and not on its device. This node alone
        decides, so an attempt that started here is never taken away (Dask's transactional
        stealing: the victim confirms)."""
        tasks = self.tasks
        request = entry.steal
        if request is None or not self._asked_to_hand_over(entry):
            return
        if not self._may_hand_over(entry):
            tasks.context.count("steals_refused")
            return
        tasks.context.count("tasks_stolen")
        state = entry.state
        tasks.update(entry.task_id, now, state=st.steal(state, tasks.mesh.view, request[1]))

    def _asked_to_hand_over(self, entry: TaskEntry) -> bool:
        """Whether ``entry`` carries a steal request for this node's current attempt."""
        request = entry.steal
        state = entry.state
        return (
            request is not None
            and self.tasks.config.work_stealing
            and state.phase is Phase.ASSIGNED
            and state.worker == self.tasks.node_id
            and state.attempt == request[0]
        )

    def _may_hand_over(self, entry: TaskEntry) -> bool:
        """Whether the requested attempt is not started here and its thief is live."""
        request = entry.steal
        assert request is not None
        thief = request[1]
        return (
            entry.started < entry.state.attempt
            and thief != self.tasks.node_id
            and thief in self.tasks.mesh.live_members()
        )

    def on_state_change(self, entry: TaskEntry) -> None:
        """Cancel a run the new state superseded; start one newly assigned to this node."""
        tasks = self.tasks
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
                tasks.own_load.dirty = True
                tasks.context.emit(CancelTask(tid, attempt))
                running = None
        if state.phase is Phase.ASSIGNED and state.worker == tasks.node_id and running is None:
            if (
                entry.steal is not None
                and self._asked_to_hand_over(entry)
                and self._may_hand_over(entry)
            ):
                return  # handed to a thief by the same change (on_steal_request): never run
            self.running[tid] = (state.attempt, state.view)
            tasks.own_load.dirty = True
            origin = tid.origin
            holders = tuple(sorted(entry.holders, key=lambda n: (n != origin, n)))
            tasks.context.count("tasks_started")
            tasks.context.emit(RunTask(tid, state.attempt, entry.spec, holders))

    def cancel(self, tid: TaskId) -> None:
        """The entry was collected: cancel its run here, if any."""
        if tid in self.running:
            self.tasks.context.emit(CancelTask(tid, self.running.pop(tid)[0]))


def failure_state(entry: TaskEntry, reason: str) -> TaskState:
    """The state after the current attempt failed transiently: RETRYING, or FAILED once
    the retry policy is exhausted."""
    current = entry.state
    if entry.spec.retry.exhausted(current.failures + 1):
        attempts = current.failures + 1
        return st.fail(current, f"gave up after {attempts} failed attempts: {reason}")
    return st.retry(current, reason)
