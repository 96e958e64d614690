"""The task component inside real nodes on the core test harness: replication before the
acknowledgement, assignment, outcomes, exactly-once resolution, journal replay. The test
plays the driver: it answers FetchPayload / RunTask effects by hand."""

from __future__ import annotations

from typing import Any

from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import (
    FetchPayload,
    Persist,
    RunTask,
    TaskAccepted,
    TaskRejected,
    TaskResolved,
)
from meshgpu.core.events import (
    JournalReplayed,
    LoadChanged,
    PayloadStored,
    ResultCollected,
    SubmitTask,
    TaskFinished,
)
from meshgpu.core.load import LoadVector
from meshgpu.core.tasks import Phase, Resolution, TaskId, TaskSpec
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.types import NodeId
from tests.core.harness import MeshHarness

CONFIG = MeshConfig(tasks=TaskConfig(gc_delay_s=1.0, assignment_timeout_s=3.0))


def settled(size: int) -> MeshHarness:
    harness = MeshHarness(size, config=CONFIG, seed=3)
    harness.run_until(3.0)
    assert harness.views_agree()
    return harness


def effects(h: MeshHarness, kind: type, node: NodeId | None = None) -> list[Any]:
    return [e for _, n, e in h.log if isinstance(e, kind) and (node is None or n == node)]


def serve_fetches(h: MeshHarness) -> None:
    """Play the data plane: every FetchPayload succeeds at once."""
    for _, node, effect in list(h.log):
        if isinstance(effect, FetchPayload) and (node, effect.task_id) not in h.served:
            h.served.add((node, effect.task_id))
            h.deliver_event(node, PayloadStored(effect.task_id))


def submit(h: MeshHarness, node: NodeId, spec: TaskSpec, ref: str = "c1") -> TaskId:
    h.served = getattr(h, "served", set())
    h.deliver_event(node, SubmitTask(ref, spec))
    for _ in range(20):
        h.run_until(h.now + 0.05)
        serve_fetches(h)
        accepted = [e for e in effects(h, TaskAccepted, node) if e.client_ref == ref]
        if accepted:
            return accepted[0].task_id
    raise AssertionError("submission was never acknowledged")


def run_assigned(h: MeshHarness, task_id: TaskId, outcome: str = "ok", reason: str = "") -> NodeId:
    """Find the newest RunTask for ``task_id`` and report it finished."""
    for _ in range(40):
        runs = [(n, e) for _, n, e in h.log if isinstance(e, RunTask) and e.task_id == task_id]
        done = getattr(h, "ran", set())
        fresh = [(n, e) for n, e in runs if (n, task_id, e.attempt) not in done]
        if fresh:
            worker, run = fresh[-1]
            done.add((worker, task_id, run.attempt))
            h.ran = done
            holders = tuple(run.holders) if outcome == "ok" else ()
            h.deliver_event(worker, TaskFinished(task_id, run.attempt, outcome, reason, holders))  # type: ignore[arg-type]
            return worker
        h.run_until(h.now + 0.05)
    raise AssertionError(f"{task_id} was never run")


SPEC = TaskSpec("model-a", "input-1")


def test_acknowledged_after_two_holders_with_persist_first() -> None:
    h = settled(4)
    task_id = submit(h, "n001", SPEC)
    accepted = effects(h, TaskAccepted, "n001")
    assert [(a.copies, a.replicas) for a in accepted] == [(2, 2)]
    origin_effects = [e for _, n, e in h.log if n == "n001"]
    first_persist = next(i for i, e in enumerate(origin_effects) if isinstance(e, Persist))
    assert first_persist < origin_effects.index(accepted[0])
    holder_nodes = {n for _, n, e in h.log if isinstance(e, FetchPayload)}
    assert len(holder_nodes) == 1 and "n001" not in holder_nodes
    (holder,) = holder_nodes
    assert any(
        isinstance(e, Persist) and e.record.entry is not None and holder in e.record.entry.holders
        for _, n, e in h.log
        if n == holder
    )
    assert task_id.origin == "n001"


def test_alone_it_acknowledges_with_the_copies_that_exist() -> None:
    h = MeshHarness(1, config=CONFIG, seed=1)
    h.run_until(1.0)
    submit(h, "n000", SPEC)
    (accepted,) = effects(h, TaskAccepted, "n000")
    assert (accepted.copies, accepted.replicas) == (1, 2)


def test_done_resolves_once_and_delivery_spreads() -> None:
    h = settled(4)
    task_id = submit(h, "n002", SPEC)
    run_assigned(h, task_id)
    h.run_until(h.now + 0.2)
    resolved = effects(h, TaskResolved)
    assert [(r.task_id, r.state) for r in resolved] == [(task_id, Resolution.DONE)]
    h.deliver_event("n002", ResultCollected(task_id))
    h.run_until(h.now + 2.0)
    for node in h.nodes.values():
        assert task_id not in node.tasks.table  # garbage-collected everywhere
        assert task_id in node.tasks.table.collected
    assert len(effects(h, TaskResolved)) == 1


def test_permanent_error_fails_at_once_without_retry() -> None:
    h = settled(3)
    task_id = submit(h, "n000", SPEC)
    run_assigned(h, task_id, "permanent_error", "input has the wrong shape")
    h.run_until(h.now + 0.5)
    (resolved,) = effects(h, TaskResolved)
    assert resolved.state is Resolution.FAILED and resolved.reason == "input has the wrong shape"
    assert len(effects(h, RunTask)) == 1


def test_transient_error_retries_on_another_worker() -> None:
    h = settled(3)
    task_id = submit(h, "n000", SPEC)
    first = run_assigned(h, task_id, "transient_error", "device lost")
    second = run_assigned(h, task_id)
    assert second != first
    h.run_until(h.now + 0.5)
    (resolved,) = effects(h, TaskResolved)
    assert resolved.state is Resolution.DONE
    entry = h.nodes["n000"].tasks.table.get(task_id)
    assert entry is not None and entry.state.failures == 1 and entry.state.attempt == 2


def test_two_successful_runs_resolve_once() -> None:
    h = settled(3)
    task_id = submit(h, "n000", SPEC)
    runs = []
    for _ in range(40):
        runs = [(n, e) for _, n, e in h.log if isinstance(e, RunTask)]
        if runs:
            break
        h.run_until(h.now + 0.05)
    worker, run = runs[0]
    finished = TaskFinished(task_id, run.attempt, "ok", "", run.holders)
    h.deliver_event(worker, finished)
    h.deliver_event(worker, finished)  # a duplicate report
    other = next(n for n in h.nodes if n != worker)
    h.deliver_event(other, TaskFinished(task_id, run.attempt, "ok", "", run.holders))
    h.run_until(h.now + 1.0)
    assert len(effects(h, TaskResolved)) == 1


def test_a_report_of_an_adopted_result_is_done_for_the_attempt_its_holders_keep() -> None:
    """Attempt 1's holders refused its result for attempt 2's (installed there, its
    report lost): the worker of attempt 1 reports ok with those holders and
    ``result_attempt`` 2, and the task's DONE names attempt 2, which they keep."""
    h = settled(3)
    task_id = submit(h, "n000", SPEC)
    first = run_assigned(h, task_id, "transient_error", "device lost")
    second = None
    for _ in range(40):
        runs = [e for _, n, e in h.log if isinstance(e, RunTask) and e.attempt == 2]
        if runs:
            second = runs[0]
            break
        h.run_until(h.now + 0.05)
    assert second is not None
    h.deliver_event(first, TaskFinished(task_id, 1, "ok", "", second.holders, result_attempt=2))
    h.run_until(h.now + 0.5)
    (resolved,) = effects(h, TaskResolved)
    assert resolved.state is Resolution.DONE
    entries = [node.tasks.table.get(task_id) for node in h.nodes.values()]
    states = [entry.state for entry in entries if entry is not None]
    assert h.nodes["n000"].tasks.table.get(task_id) is not None
    assert states and all(s.phase is Phase.DONE and s.attempt == 2 for s in states)


def newest_run(h: MeshHarness, task_id: TaskId, attempt: int) -> tuple[NodeId, RunTask]:
    for _ in range(80):
        runs = [(n, e) for _, n, e in h.log if isinstance(e, RunTask) and e.attempt == attempt]
        if runs:
            return runs[0]
        h.run_until(h.now + 0.05)
    raise AssertionError(f"attempt {attempt} of {task_id} was never run")


def test_an_adopted_older_attempts_done_and_the_newer_attempts_report_agree() -> None:
    """Attempt 2's result is on its holders but its report was lost (failed here), and
    attempt 3 is assigned when attempt 1's worker, refused by those holders, reports the
    adopted attempt 2; attempt 3's worker reports its own result at the same time, on
    another node. Every replica ends in one DONE, with both reports' holders, and the
    task resolves once: neither report is lost, nor the task."""
    h = settled(4)
    task_id = submit(h, "n000", SPEC)
    first = run_assigned(h, task_id, "transient_error", "device lost")
    second_worker, second = newest_run(h, task_id, 2)
    h.deliver_event(second_worker, TaskFinished(task_id, 2, "transient_error", "report lost"))
    third_worker, third = newest_run(h, task_id, 3)
    assert third_worker != first  # two nodes report at once
    h.deliver_event(first, TaskFinished(task_id, 1, "ok", "", second.holders, result_attempt=2))
    h.deliver_event(third_worker, TaskFinished(task_id, 3, "ok", "", third.holders))
    h.run_until(h.now + 1.0)
    (resolved,) = effects(h, TaskResolved)
    assert resolved.state is Resolution.DONE
    entries = [node.tasks.table.get(task_id) for node in h.nodes.values()]
    present = [entry for entry in entries if entry is not None]
    assert present and len({entry.state for entry in present}) == 1
    state = present[0].state
    assert state.phase is Phase.DONE and state.attempt in (2, 3)
    for entry in present:
        assert set(second.holders) | set(third.holders) <= set(entry.result_holders)


def test_unknown_strategy_is_rejected() -> None:
    h = settled(2)
    h.deliver_event("n000", SubmitTask("bad", TaskSpec("m", "i", strategy="fastest")))
    (rejected,) = effects(h, TaskRejected)
    assert "fastest" in rejected.reason and not effects(h, TaskAccepted)


def test_dead_worker_tasks_are_reassigned() -> None:
    h = settled(4)
    task_id = submit(h, "n000", SPEC)
    runs: list[tuple[NodeId, RunTask]] = []
    for _ in range(40):
        runs = [(n, e) for _, n, e in h.log if isinstance(e, RunTask)]
        if runs:
            break
        h.run_until(h.now + 0.05)
    worker = runs[0][0]
    h.crash(worker)
    h.run_until(h.now + 4.0)
    reruns = [(n, e) for _, n, e in h.log if isinstance(e, RunTask) and n != worker]
    assert reruns and reruns[0][1].attempt == 2 and reruns[0][1].task_id == task_id


def test_journal_replay_restores_held_entries() -> None:
    h = settled(3)
    task_id = submit(h, "n001", SPEC)
    records = tuple(e.record for _, n, e in h.log if n == "n001" and isinstance(e, Persist))
    fresh = MeshHarness(1, config=CONFIG, seed=9)
    node = fresh.nodes["n000"]
    node.handle(JournalReplayed(records), 0.0)
    entry = node.tasks.table.get(task_id)
    assert entry is not None and entry.state.phase is not Phase.DONE
    assert "n001" in entry.holders


def test_deadline_fails_a_task_nobody_finishes() -> None:
    h = settled(3)
    task_id = submit(h, "n000", TaskSpec("model-a", "input-2", deadline_s=1.0))
    h.run_until(h.now + 2.0)  # assigned, but the worker never reports
    (resolved,) = effects(h, TaskResolved)
    assert (resolved.task_id, resolved.state, resolved.reason) == (
        task_id,
        Resolution.FAILED,
        "deadline exceeded",
    )


def test_load_vector_carries_the_task_fields() -> None:
    h = settled(3)
    submit(h, "n000", SPEC)
    for _ in range(40):
        running = [n for n, node in h.nodes.items() if node.tasks.running]
        if running:
            break
        h.run_until(h.now + 0.05)
    (worker,) = running
    h.run_until(h.now + 1.5)  # past the load publishing interval
    load = h.nodes["n000"].loads()[worker]
    capacity = CONFIG.tasks.slots
    assert (load.active_tasks, load.free_slots) == (1, capacity - 1)


def test_a_dead_holder_is_replaced() -> None:
    h = settled(5)
    task_id = submit(h, "n000", SPEC)
    entry = h.nodes["n000"].tasks.table.get(task_id)
    assert entry is not None
    (second,) = entry.holders - {"n000"}
    h.crash(second)
    for _ in range(80):
        h.run_until(h.now + 0.1)
        serve_fetches(h)
    entry = h.nodes["n000"].tasks.table.get(task_id)
    assert entry is not None
    live_holders = entry.holders - {second}
    assert len(live_holders) == 2 and "n000" in live_holders


def test_a_load_waiting_for_its_publication_does_not_hold_back_housekeeping() -> None:
    h = settled(3)
    tasks = h.nodes["n000"].tasks
    h.deliver_event("n000", LoadChanged(LoadVector(free_slots=2)))  # first report: at once
    h.run_until(h.now + 0.01)
    h.deliver_event("n000", LoadChanged(LoadVector(free_slots=2, utilisation=0.3)))
    assert tasks.own_load.dirty and tasks._tick_at - h.now > 0.5  # routine: waits ~1 s
    tasks.book.collect_at[TaskId("n001", 1)] = h.now + 0.05  # work that wants the next tick
    tasks._arm_tick(h.now)
    assert tasks._tick_at - h.now <= CONFIG.tasks.tick_interval_s + 1e-9
