"""Targeted dissemination of task changes, the hand-over to a new leader, orphaned
submissions and graceful hand-backs, on real nodes in the core test harness (the test plays
the driver, as in ``test_component.py``)."""

from __future__ import annotations

from dataclasses import replace

from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import FetchPayload, RunTask, TaskAccepted, TaskResolved
from meshgpu.core.events import (
    PayloadStored,
    PeerDiscovered,
    ResultCollected,
    ResultRequested,
    SubmitTask,
)
from meshgpu.core.tasks import Phase, Resolution, TaskId, TaskSpec
from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.retry import RetryPolicy
from meshgpu.core.types import NodeId
from tests.core.harness import MeshHarness
from tests.core.tasks.test_component import effects, run_assigned, serve_fetches, submit

SPEC = TaskSpec("model-a", "input-1")


def settled(size: int, **task_settings: float) -> MeshHarness:
    config = MeshConfig(
        tasks=TaskConfig(gc_delay_s=1.0, assignment_timeout_s=30.0, **task_settings)  # type: ignore[arg-type]
    )
    harness = MeshHarness(size, config=config, seed=5)
    harness.run_until(3.0)
    assert harness.views_agree()
    return harness


def leader_of(h: MeshHarness) -> NodeId:
    leaders = {h.nodes[n].leader() for n in h.live()}
    assert len(leaders) == 1, f"the live nodes disagree on the leader: {leaders}"
    (leader,) = leaders
    assert leader is not None
    return leader


def test_an_uninvolved_node_never_hears_of_a_task() -> None:
    h = settled(8)
    origin = next(n for n in h.nodes if n != leader_of(h))
    task_id = submit(h, origin, SPEC)
    worker = run_assigned(h, task_id)
    entry = h.nodes[origin].tasks.table.get(task_id)
    assert entry is not None
    involved = set(entry.holders) | {origin, worker, leader_of(h)}
    bystanders = [n for n in h.nodes if n not in involved]
    assert len(bystanders) >= 3
    seen: set[NodeId] = set()
    for _ in range(30):
        h.run_until(h.now + 0.1)
        seen |= {n for n in bystanders if task_id in h.nodes[n].tasks.table}
    assert not seen, f"{sorted(seen)} got entries of a task they play no part in"
    h.deliver_event(origin, ResultCollected(task_id))
    h.run_until(h.now + 8.0)
    for node_id, node in h.nodes.items():  # tombstones still reach everyone
        assert task_id not in node.tasks.table, node_id
        assert task_id in node.tasks.table.collected, node_id


def test_a_task_costs_the_same_datagrams_in_a_larger_mesh() -> None:
    costs = []
    for size in (4, 12):
        h = settled(size, sync_interval_s=60.0)  # anti-entropy out of the way
        warm_up = submit(h, "n002", SPEC, ref="warm-up")  # first contacts hand over once
        run_assigned(h, warm_up)
        h.run_until(h.now + 0.5)
        before = sum(n.counters.get("task_datagrams_sent", 0) for n in h.nodes.values())
        task_id = submit(h, "n001", SPEC)
        run_assigned(h, task_id)
        h.run_until(h.now + 0.2)
        h.deliver_event("n001", ResultCollected(task_id))
        h.run_until(h.now + 0.5)
        after = sum(n.counters.get("task_datagrams_sent", 0) for n in h.nodes.values())
        costs.append(after - before)
    # Submit, hold, acknowledge, assign, done, delivered: a dozen datagrams whatever the
    # size (sending every change to every member cost about six per member: ~70 at 12).
    assert max(costs) <= 14, costs


def test_a_new_leader_learns_the_open_queue_and_leaves_running_tasks_alone() -> None:
    h = settled(6, slots=1)
    leader = leader_of(h)
    origins = [n for n in sorted(h.nodes) if n != leader]
    submitted: list[TaskId] = []
    for index in range(9):  # 6 slots: six run, three wait in the queue
        submitted.append(submit(h, origins[index % len(origins)], SPEC, ref=f"c{index}"))
    h.run_until(h.now + 0.5)
    running = {e.task_id: n for _, n, e in h.log if isinstance(e, RunTask)}
    assert len(running) == 6
    queued = [t for t in submitted if t not in running]
    h.crash(leader)
    crashed_at = h.now
    h.run_until(h.now + 5.0)  # declared dead, new view
    new_leader = leader_of(h)
    assert new_leader != leader
    rerun = [
        e.task_id
        for t, n, e in h.log
        if isinstance(e, RunTask) and t > crashed_at and running.get(e.task_id, leader) != leader
    ]
    assert not rerun, f"tasks still running on live workers were assigned again: {rerun}"
    for task_id in queued:  # handed over by their holders
        entry = h.nodes[new_leader].tasks.table.get(task_id)
        assert entry is not None and entry.acknowledged, f"{task_id} never reached the leader"
    for task_id, worker in running.items():  # free the live workers' slots
        if worker != leader:
            run_assigned(h, task_id)
    orphan = next(t for t, w in running.items() if w == leader)
    for task_id in [*queued, orphan]:
        run_assigned(h, task_id)
    h.run_until(h.now + 0.5)
    done = {e.task_id for e in effects(h, TaskResolved) if e.state is Resolution.DONE}
    assert done == set(submitted) - {t for t in submitted if t.origin == leader}


def test_an_orphaned_submission_runs_and_is_collected() -> None:
    """The origin dies after a holder stored the inputs but before it acknowledged: the
    holder adopts the task (it runs), and its unclaimed outcome is dropped in time."""
    h = settled(3, unclaimed_keep_s=2.0)
    origin = "n001"
    h.deliver_event(origin, SubmitTask("c1", SPEC))
    fetches: list[tuple[NodeId, FetchPayload]] = []
    for _ in range(20):
        h.run_until(h.now + 0.01)
        fetches = [(n, e) for _, n, e in h.log if isinstance(e, FetchPayload)]
        if fetches:
            break
    (holder, fetch) = fetches[0]
    h.crash(origin)  # before the holder's answer can reach it
    h.deliver_event(holder, PayloadStored(fetch.task_id))
    assert not effects(h, TaskAccepted)
    h.run_until(h.now + 6.0)  # the origin is declared dead
    entry = h.nodes[holder].tasks.table.get(fetch.task_id)
    assert entry is not None and entry.acknowledged
    run_assigned(h, fetch.task_id)
    h.run_until(h.now + 0.5)
    entry = h.nodes[holder].tasks.table.get(fetch.task_id)
    assert entry is not None and entry.state.phase is Phase.DONE
    h.run_until(h.now + 6.0)  # unclaimed_keep_s, then gc_delay_s
    for node_id in h.live():
        assert fetch.task_id not in h.nodes[node_id].tasks.table, node_id
    assert fetch.task_id in h.nodes[holder].tasks.table.collected


def test_a_graceful_hand_back_does_not_use_up_an_attempt() -> None:
    h = settled(3)
    spec = TaskSpec("model-a", "input-3", retry=RetryPolicy(max_attempts=1))
    task_id = submit(h, "n000", spec)
    first = run_assigned(h, task_id, "handed_back", "worker left")
    second = run_assigned(h, task_id)
    assert second != first  # not given back to the node that is leaving
    h.run_until(h.now + 0.5)
    (resolved,) = effects(h, TaskResolved)
    assert resolved.state is Resolution.DONE
    entry = h.nodes["n000"].tasks.table.get(task_id)
    assert entry is not None and entry.state.failures == 0 and entry.state.attempt == 2


def test_a_client_asking_an_uninvolved_node_gets_its_outcome() -> None:
    h = settled(6)
    task_id = submit(h, "n001", SPEC)
    worker = run_assigned(h, task_id)
    h.run_until(h.now + 0.3)
    entry = h.nodes["n001"].tasks.table.get(task_id)
    assert entry is not None
    involved = set(entry.holders) | {"n001", worker, leader_of(h)}
    asked = next(n for n in sorted(h.nodes) if n not in involved)
    h.deliver_event(asked, ResultRequested(task_id))
    h.run_until(h.now + 1.0)
    answers = [e for e in effects(h, TaskResolved, asked) if e.task_id == task_id]
    assert [a.state for a in answers] == [Resolution.DONE]
    serve_fetches(h)


def test_a_leader_confirms_its_stale_copies_with_the_holders_before_acting() -> None:
    """A node that assigned a task in an earlier term may hold a stale copy (the task
    finished under the next leader, and only involved nodes heard). Leading again, it
    leaves that copy alone until a holder's copy came back."""
    h = settled(6)
    leader = leader_of(h)
    origin = next(n for n in sorted(h.nodes) if n != leader)
    task_id = submit(h, origin, SPEC)
    worker = run_assigned(h, task_id)  # DONE; never delivered, so never collected
    h.run_until(h.now + 0.5)
    entry = h.nodes[origin].tasks.table.get(task_id)
    assert entry is not None and entry.state.phase is Phase.DONE
    involved = set(entry.holders) | {origin, worker, leader}
    former = next(n for n in sorted(h.nodes) if n not in involved)
    tasks = h.nodes[former].tasks
    stale = replace(entry, state=st.assign(st.PENDING, 0, worker), result_holders=frozenset())
    tasks.merge_remote(stale, h.now)  # what it heard as leader of an earlier term
    tasks.sync.confirm_as_leader()  # what it does on becoming leader again
    asked, tasks.context.effects = tasks.context.effects, []
    h._execute(former, asked)  # called outside Node.handle: deliver its datagrams by hand
    mine = tasks.table.get(task_id)
    assert mine is not None and not tasks.is_current(mine)
    h.run_until(h.now + 0.2)  # the holders answer its TaskWant
    mine = tasks.table.get(task_id)
    assert mine is not None and tasks.is_current(mine) and mine.state.phase is Phase.DONE


def test_an_origin_restarted_without_its_data_resolves_old_tasks_only_when_asked() -> None:
    """Its old client is gone (or already served: the delivered mark may have died with the
    wiped data dir), so only a client that asks again is told the outcome."""
    h = settled(4)
    origin = "n001"
    task_id = submit(h, origin, SPEC)
    run_assigned(h, task_id)
    h.run_until(h.now + 0.3)
    assert len(effects(h, TaskResolved, origin)) == 1  # told once, never confirmed
    h.crash(origin)
    h.run_until(h.now + 1.0)
    h.add_node(origin, incarnation=5)  # back with an empty data dir
    h.deliver_event(origin, PeerDiscovered(h.nodes["n000"].address, "n000"))
    for _ in range(100):  # the holders' anti-entropy hands its entry back
        h.run_until(h.now + 0.1)
        if task_id in h.nodes[origin].tasks.table:
            break
    assert task_id in h.nodes[origin].tasks.table
    h.run_until(h.now + 1.0)
    assert len(effects(h, TaskResolved, origin)) == 1
    h.deliver_event(origin, ResultRequested(task_id))
    h.run_until(h.now + 0.5)
    states = [e.state for e in effects(h, TaskResolved, origin)]
    assert states == [Resolution.DONE, Resolution.DONE]
