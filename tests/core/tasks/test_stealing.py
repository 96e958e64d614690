"""Work stealing (core/tasks/stealing.py): the leader proposes through the table, the
worker of the attempt decides, a started attempt is never taken away, a stolen task is
delivered once, and a start racing a steal is settled by the table's rules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import CancelTask, RunTask, TaskResolved
from meshgpu.core.events import LoadChanged, TaskFinished, TaskStarted
from meshgpu.core.load import DeviceCapabilities, LoadVector
from meshgpu.core.tasks import Phase, TaskEntry, TaskId, TaskSpec, merge_entries
from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.spec import DeviceRequirements
from meshgpu.core.tasks.stealing import AssignedTask, plan_steals
from meshgpu.core.tasks.strategies import WorkerView
from meshgpu.core.tasks.wire import entry_from_wire, entry_to_wire
from meshgpu.core.types import NodeId
from meshgpu.errors import ConfigError
from tests.core.harness import MeshHarness
from tests.core.tasks.test_component import effects, submit

SPEC = TaskSpec("resnet50", "input-1", (("x", (1, 3)),))
STEALING = MeshConfig(
    tasks=TaskConfig(gc_delay_s=1.0, assignment_timeout_s=30.0, work_stealing=True)
)


# --- the leader's proposal (a pure function) --------------------------------------------


def queued(
    n: int, worker: str, *, started: bool = False, requested: bool = False, since: float = 0.0
) -> AssignedTask:
    return AssignedTask(TaskId("o", n), SPEC, worker, 1, started, requested, since)


def view(node: str, in_flight: int, latency: float | None = None, **kw: Any) -> WorkerView:
    estimates = () if latency is None else (("resnet50", latency),)
    return WorkerView(node, 4, in_flight, latency_estimates=estimates, **kw)


def test_an_idle_worker_is_given_the_tasks_queued_behind_a_busy_ones_runs() -> None:
    assigned = [
        queued(1, "slow", started=True),
        queued(2, "slow", started=True),
        queued(3, "slow"),
        queued(4, "slow"),
    ]
    workers = [view("slow", 4, 0.16), view("fast", 0, 0.04)]
    steals = plan_steals(assigned, workers, settled_before=1.0)
    assert {(s.task_id.sequence, s.victim, s.thief, s.attempt) for s in steals} == {
        (3, "slow", "fast", 1),
        (4, "slow", "fast", 1),
    }


def test_a_started_task_is_never_proposed() -> None:
    assigned = [queued(1, "slow", started=True), queued(2, "slow", started=True)]
    workers = [view("slow", 2, 0.16), view("fast", 0, 0.04)]
    assert plan_steals(assigned, workers, settled_before=1.0) == []


@pytest.mark.parametrize(
    "case",
    ["nothing_started", "too_young", "requested", "thief_busy", "no_gain", "incapable", "open"],
)
def test_no_steal_without_every_condition(case: str) -> None:
    started = case != "nothing_started"
    since = 2.0 if case == "too_young" else 0.0
    assigned = [
        queued(1, "slow", started=started),
        queued(2, "slow", requested=case == "requested", since=since),
    ]
    thief = view(
        "fast",
        1 if case == "thief_busy" else 0,
        0.5 if case == "no_gain" else 0.04,
        device_types=("cpu",) if case == "incapable" else ("gpu",),
        admits=case != "open",
    )
    spec = replace(SPEC, requirements=DeviceRequirements(device_type="gpu"))
    assigned = [replace(t, spec=spec) for t in assigned]
    workers = [view("slow", 2, 0.16, device_types=("gpu",)), thief]
    assert plan_steals(assigned, workers, settled_before=1.0) == []


# --- the table: marks and their merges -----------------------------------------------------


def entry(**changes: Any) -> TaskEntry:
    return replace(TaskEntry(TaskId("o", 1), SPEC), **changes)


def test_the_marks_merge_by_max_and_a_start_and_a_steal_commute() -> None:
    assigned = st.assign(st.PENDING, 1, "slow")
    stolen = st.steal(assigned, 2, "fast")
    started = entry(state=assigned, started=1, steal=(1, "fast"))
    released = entry(state=stolen, steal=(1, "fast"))
    ab, ba = merge_entries(started, released), merge_entries(released, started)
    assert ab == ba
    assert ab.state == stolen and ab.started == 1 and ab.steal == (1, "fast")
    assert merge_entries(entry(steal=(1, "a")), entry(steal=(2, "a"))).steal == (2, "a")


def test_an_entry_without_the_marks_encodes_as_before_and_with_them_round_trips() -> None:
    plain = entry(state=st.assign(st.PENDING, 1, "w"))
    assert len(entry_to_wire(plain)) == 8
    marked = replace(plain, started=1, steal=(1, "thief"))
    assert entry_from_wire(entry_to_wire(marked)) == marked
    assert entry_from_wire(entry_to_wire(replace(plain, started=3))).started == 3


def test_only_the_worker_makes_the_steal_transition_and_it_moves_up() -> None:
    assigned = st.assign(st.PENDING, 4, "slow")
    stolen = st.steal(assigned, 5, "fast")
    assert stolen.phase is Phase.ASSIGNED and stolen.attempt == 2 and stolen.worker == "fast"
    assert st.is_steal(stolen) and stolen.order_key > assigned.order_key
    with pytest.raises(Exception, match="illegal task transition"):
        st.steal(st.retry(assigned, "x"), 5, "fast")


# --- the worker decides (real nodes on the core harness) ---------------------------------


def mesh_with_a_running_task() -> tuple[MeshHarness, TaskId, NodeId, NodeId]:
    """Three nodes with stealing on; one task assigned; returns (harness, task, worker,
    another live node)."""
    h = MeshHarness(3, config=STEALING, seed=5)
    h.run_until(3.0)
    for node in h.nodes:
        caps = DeviceCapabilities(("gpu",), False, 1 << 30)
        h.deliver_event(node, LoadChanged(LoadVector(free_slots=4, capabilities=caps)))
    h.run_until(h.now + 1.5)
    tid = submit(h, "n000", SPEC)
    for _ in range(40):
        runs = [n for _, n, e in h.log if isinstance(e, RunTask) and e.task_id == tid]
        if runs:
            worker = runs[0]
            other = next(n for n in sorted(h.nodes) if n != worker)
            return h, tid, worker, other
        h.run_until(h.now + 0.05)
    raise AssertionError("never assigned")


def request_steal(h: MeshHarness, worker: NodeId, tid: TaskId, thief: NodeId) -> None:
    """The leader's request reaching the worker: its entry with the steal mark, merged as
    a received update is (the effects go to the harness like a handler's)."""
    tasks = h.nodes[worker].tasks
    mine = tasks.table.get(tid)
    assert mine is not None
    context = tasks.context
    context.effects = []
    tasks.merge_remote(replace(mine, steal=(mine.state.attempt, thief)), h.now)
    tasks._finish(h.now)
    made, context.effects = context.effects, []
    h._execute(worker, made)


def test_the_worker_hands_an_unstarted_attempt_to_the_thief_and_cancels_its_own() -> None:
    h, tid, worker, thief = mesh_with_a_running_task()
    request_steal(h, worker, tid, thief)
    state = h.nodes[worker].tasks.table.get(tid).state  # type: ignore[union-attr]
    assert state.worker == thief and state.attempt == 2 and st.is_steal(state)
    assert [e.attempt for e in effects(h, CancelTask, worker) if e.task_id == tid] == [1]
    h.run_until(h.now + 0.2)
    runs = [(n, e.attempt) for _, n, e in h.log if isinstance(e, RunTask) and e.task_id == tid]
    assert runs == [(worker, 1), (thief, 2)]


def test_a_started_task_is_never_stolen() -> None:
    h, tid, worker, thief = mesh_with_a_running_task()
    h.deliver_event(worker, TaskStarted(tid, 1))
    request_steal(h, worker, tid, thief)
    entry_now = h.nodes[worker].tasks.table.get(tid)
    assert entry_now is not None and entry_now.state.worker == worker
    assert entry_now.state.attempt == 1 and entry_now.started == 1
    assert not effects(h, CancelTask, worker)
    assert h.nodes[worker].counters.get("steals_refused") == 1


def test_a_stolen_task_is_delivered_exactly_once() -> None:
    h, tid, worker, thief = mesh_with_a_running_task()
    request_steal(h, worker, tid, thief)
    h.run_until(h.now + 0.2)
    run = next(e for _, n, e in h.log if isinstance(e, RunTask) and n == thief)
    h.deliver_event(thief, TaskStarted(tid, run.attempt))
    h.deliver_event(thief, TaskFinished(tid, run.attempt, "ok", "", tuple(run.holders)))
    # The victim's cancelled run reported anyway (a driver that could not stop it).
    h.deliver_event(worker, TaskFinished(tid, 1, "ok", "", tuple(run.holders)))
    h.run_until(h.now + 1.0)
    resolved = [e for e in effects(h, TaskResolved, "n000") if e.task_id == tid]
    assert len(resolved) == 1 and resolved[0].state.value == "done"


def test_a_start_reported_after_the_release_is_ignored_by_the_tables_rules() -> None:
    """The race: the worker's driver put the attempt on the device while the core was
    releasing it. The release came first, so the thief's attempt stands; the late start
    report changes nothing and is counted. Every node's copy converges to the same entry,
    whichever order the thief's and the worker's changes reach it in."""
    h, tid, worker, thief = mesh_with_a_running_task()
    request_steal(h, worker, tid, thief)
    h.deliver_event(worker, TaskStarted(tid, 1))
    assert h.nodes[worker].counters.get("task_starts_superseded") == 1
    mine = h.nodes[worker].tasks.table.get(tid)
    assert mine is not None and mine.state.worker == thief and mine.started == 0
    h.run_until(h.now + 1.0)
    copies = {h.nodes[n].tasks.table.get(tid) for n in h.nodes}
    states = {c.state for c in copies if c is not None}
    assert states == {mine.state}


def test_with_stealing_off_a_start_changes_nothing() -> None:
    h = MeshHarness(3, config=MeshConfig(tasks=TaskConfig(gc_delay_s=1.0)), seed=5)
    h.run_until(3.0)
    tid = submit(h, "n000", SPEC)
    for _ in range(40):
        runs = [n for _, n, e in h.log if isinstance(e, RunTask) and e.task_id == tid]
        if runs:
            break
        h.run_until(h.now + 0.05)
    worker = runs[0]
    before = h.nodes[worker].tasks.table.get(tid)
    h.deliver_event(worker, TaskStarted(tid, 1))
    assert h.nodes[worker].tasks.table.get(tid) == before


def test_an_assignment_that_arrives_with_its_steal_request_is_handed_over_unrun() -> None:
    """A worker that missed its assignment hears of it together with the request to hand
    it over: it hands it over at once and never puts it on its device."""
    h, tid, worker, _ = mesh_with_a_running_task()
    late, thief = (n for n in sorted(h.nodes) if n != worker)
    tasks = h.nodes[late].tasks
    current = h.nodes[worker].tasks.table.get(tid)
    assert current is not None
    reassigned = st.assign(current.state, current.state.view, late)
    context = tasks.context
    context.effects = []
    tasks.merge_remote(replace(current, state=reassigned, steal=(reassigned.attempt, thief)), h.now)
    made, context.effects = context.effects, []
    assert not [e for e in made if isinstance(e, RunTask)]
    state = tasks.table.get(tid).state  # type: ignore[union-attr]
    assert state.worker == thief and state.attempt == reassigned.attempt + 1


def test_the_switch_is_a_boolean_setting() -> None:
    assert TaskConfig.from_mapping({"work_stealing": True}).work_stealing
    assert not TaskConfig().work_stealing
    with pytest.raises(ConfigError, match="work_stealing must be true or false"):
        TaskConfig.from_mapping({"work_stealing": "yes"})
