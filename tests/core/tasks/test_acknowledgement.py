"""The acknowledgement gates assignment, and replication insists on full copies while
enough live members exist (real nodes on the core harness; the test plays the data plane
and decides when a holder candidate's fetch completes)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as hs

from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import FetchPayload, RunTask, TaskAccepted
from meshgpu.core.events import PayloadStored, SubmitTask
from meshgpu.core.tasks import Resolution, TaskId, TaskSpec
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.table import TaskEntry, merge_entries
from meshgpu.core.tasks.wire import entry_from_wire, entry_to_wire
from tests.core.harness import MeshHarness
from tests.core.tasks.test_component import effects, serve_fetches

SPEC = TaskSpec("model-a", "input-1")


def settled(size: int, **tasks: float) -> MeshHarness:
    config = MeshConfig(tasks=TaskConfig(assignment_timeout_s=30.0, **tasks))  # type: ignore[arg-type]
    harness = MeshHarness(size, config=config, seed=5)
    harness.run_until(3.0)
    assert harness.views_agree()
    return harness


def submitted(h: MeshHarness, node: str) -> TaskId:
    h.served = set()
    h.deliver_event(node, SubmitTask("c1", SPEC))
    h.run_until(h.now + 0.01)
    (entry,) = h.nodes[node].tasks.table
    return entry.task_id


def test_a_task_is_not_assigned_before_it_is_acknowledged() -> None:
    """Regression: the origin merged the task PENDING with holders={origin} and the
    leader assigned it at once, so the worker stored the result on the origin alone."""
    h = settled(4)
    task_id = submitted(h, "n001")
    h.run_until(h.now + 0.8)  # several leader rounds; no candidate has fetched yet
    assert not effects(h, RunTask)
    for node in h.nodes.values():
        entry = node.tasks.table.get(task_id)
        assert entry is None or not entry.acknowledged
    serve_fetches(h)
    for _ in range(20):
        h.run_until(h.now + 0.05)
        if effects(h, RunTask):
            break
    (accepted,) = effects(h, TaskAccepted, "n001")
    assert (accepted.copies, accepted.replicas) == (2, 2)
    (run,) = effects(h, RunTask)
    assert len(run.holders) == 2  # the worker stores the result on both holders
    assert all(
        node.tasks.table.get(task_id).acknowledged  # type: ignore[union-attr]
        for node in h.nodes.values()
        if task_id in node.tasks.table
    )


def test_slow_candidates_are_asked_again_not_settled_for_one_copy() -> None:
    """Regression: after each live candidate missed the 1 s timeout once, the origin
    acknowledged with copies=1 although three more nodes were alive."""
    h = settled(4)
    submitted(h, "n001")
    h.run_until(h.now + 6.0)  # every candidate misses the timeout, several times over
    assert not effects(h, TaskAccepted)
    asked = [n for _, n, e in h.log if isinstance(e, FetchPayload)]
    assert len(set(asked)) >= 2  # the origin went on to other candidates
    serve_fetches(h)
    for _ in range(20):
        h.run_until(h.now + 0.05)
        serve_fetches(h)
    (accepted,) = effects(h, TaskAccepted, "n001")
    assert (accepted.copies, accepted.replicas) == (2, 2)


def test_the_overall_bound_acknowledges_with_the_copies_that_exist() -> None:
    h = settled(4, replication_give_up_s=4.0)
    submitted(h, "n001")
    h.run_until(h.now + 3.5)
    assert not effects(h, TaskAccepted)
    h.run_until(h.now + 1.0)
    (accepted,) = effects(h, TaskAccepted, "n001")
    assert (accepted.copies, accepted.replicas) == (1, 2)


def test_the_acknowledged_mark_merges_up_and_round_trips() -> None:
    plain = TaskEntry(TaskId("n1", 1), SPEC)
    acked = TaskEntry(TaskId("n1", 1), SPEC, acknowledged=True)
    assert merge_entries(plain, acked).acknowledged
    assert merge_entries(acked, plain).acknowledged
    assert entry_from_wire(entry_to_wire(acked)) == acked
    legacy = entry_to_wire(plain)[:7]  # a journal record from before the mark
    assert entry_from_wire(legacy).acknowledged


def test_a_done_task_whose_result_holders_all_died_runs_again() -> None:
    """Defence in depth: DONE is no dead end. The worker stored the result on itself only
    (as the pre-acknowledgement bug did) and died before delivery: the leader opens a new
    epoch, the task runs again on a live node, and the client is told the new outcome."""
    from meshgpu.core.effects import TaskResolved
    from meshgpu.core.events import TaskFinished
    from meshgpu.core.tasks import Phase

    h = settled(4)
    task_id = submitted(h, "n001")
    for _ in range(20):
        serve_fetches(h)
        h.run_until(h.now + 0.05)
    (first,) = [(n, e) for _, n, e in h.log if isinstance(e, RunTask)]
    worker, run = first
    h.deliver_event(worker, TaskFinished(task_id, run.attempt, "ok", "", (worker,)))
    h.run_until(h.now + 0.3)
    assert [r.result_holders for r in effects(h, TaskResolved)] == [(worker,)]
    survivor = next(n for n in sorted(h.nodes) if n != worker)
    h.crash(worker)
    for _ in range(200):
        h.run_until(h.now + 0.1)
        if any(e.attempt > run.attempt for e in effects(h, RunTask)):
            break
    entry = h.nodes[survivor].tasks.table.get(task_id)
    assert entry is not None and entry.state.epoch == 1, entry
    again = [(n, e) for _, n, e in h.log if isinstance(e, RunTask) and e.attempt > run.attempt]
    assert again, f"never re-run: {entry.state}"
    rerun_worker, rerun = again[-1]
    assert rerun_worker != worker
    h.deliver_event(rerun_worker, TaskFinished(task_id, rerun.attempt, "ok", "", rerun.holders))
    h.run_until(h.now + 0.5)
    resolved = effects(h, TaskResolved)
    assert len(resolved) == 2 and resolved[-1].state is Resolution.DONE
    assert set(resolved[-1].result_holders) - {worker}  # a live node serves it now
    entry = h.nodes[survivor].tasks.table.get(task_id)
    assert entry is not None and entry.state.phase is Phase.DONE and entry.state.epoch == 1


@settings(max_examples=10, deadline=None, print_blob=True)
@given(
    size=hs.integers(2, 5),
    replicas=hs.integers(1, 4),
    slow=hs.lists(hs.floats(0.0, 3.0), min_size=5, max_size=5),
    submitters=hs.lists(hs.integers(0, 4), min_size=1, max_size=4),
)
def test_no_task_runs_before_its_acknowledgement(
    size: int, replicas: int, slow: list[float], submitters: list[int]
) -> None:
    """Property: whatever the fetch delays, a RunTask for a task is only ever emitted
    after its origin acknowledged it, and names at least the acknowledged copies; with
    enough live nodes the acknowledgement has all ``replicas`` copies. Hypothesis prints
    the shrunk parameters (and the seed blob) on failure."""
    h = settled(size)
    h.served = set()
    names = sorted(h.nodes)
    spec = TaskSpec("model-a", "input-1", replicas=replicas)
    for index, who in enumerate(submitters):
        h.deliver_event(names[who % size], SubmitTask(f"c{index}", spec))
    ready_at: dict[tuple[str, TaskId], float] = {}
    for _ in range(120):
        h.run_until(h.now + 0.05)
        for _, node, effect in list(h.log):
            if isinstance(effect, FetchPayload):
                key = (node, effect.task_id)
                due = ready_at.setdefault(key, h.now + slow[names.index(node) % len(slow)])
                if h.now >= due and key not in h.served:
                    h.served.add(key)
                    h.deliver_event(node, PayloadStored(effect.task_id))
    accepted: dict[TaskId, tuple[float, int]] = {}
    for time, _, effect in h.log:
        if isinstance(effect, TaskAccepted):
            accepted.setdefault(effect.task_id, (time, effect.copies))
            assert effect.copies == min(replicas, size), effect  # no peer missing here
        if isinstance(effect, RunTask):
            assert effect.task_id in accepted, f"{effect.task_id} ran before acknowledgement"
            assert len(effect.holders) >= accepted[effect.task_id][1], effect
    assert len(accepted) == len(submitters)


def test_nodes_given_a_copy_are_asked_first() -> None:
    """A relayed upload left a copy on one node (``copies_at``): the origin asks that
    node to hold the task and no other, whichever node the random choice would pick."""
    h = settled(5)
    asked_without: set[str] = set()
    for index, holder in enumerate(["n000", "n002", "n003", "n004", "n002", "n000"]):
        h.served = set()
        ref = f"relayed-{index}"
        spec = TaskSpec("model-a", f"input-relayed-{index}")
        h.deliver_event("n001", SubmitTask(ref, spec, copies_at=(holder,)))
        h.run_until(h.now + 0.01)
        fetching = {
            n
            for _, n, e in h.log
            if isinstance(e, FetchPayload) and e.input_digest == spec.input_digest
        }
        assert fetching == {holder}
        serve_fetches(h)
        h.run_until(h.now + 0.2)
        (accepted,) = [e for e in effects(h, TaskAccepted, "n001") if e.client_ref == ref]
        assert accepted.copies == 2
        plain = TaskSpec("model-a", f"input-plain-{index}")
        h.deliver_event("n001", SubmitTask(f"plain-{index}", plain))
        h.run_until(h.now + 0.01)
        asked_without |= {
            n
            for _, n, e in h.log
            if isinstance(e, FetchPayload) and e.input_digest == plain.input_digest
        }
        serve_fetches(h)
        h.run_until(h.now + 0.2)
    assert len(asked_without) >= 2  # without a copy the candidate is drawn at random
