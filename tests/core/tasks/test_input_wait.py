"""A task whose inputs no holder can serve for a while waits for them instead of spending
its retry budget (docs/task-queue.md, "Waiting for the inputs").

Found on real daemons: a holder restarting is declared dead until it is seen again, the
worker's driver finds no live holder, and the default policy (exponential from 0.1 s, four
attempts) used every attempt in under a second: the task failed "gave up after 4 failed
attempts: inputs ... unavailable: no live holder" while its holders were coming back with
their journals. The test plays the driver: a run finds the inputs while a holder is up.
"""

from __future__ import annotations

from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import Persist, RunTask, TaskResolved
from meshgpu.core.events import JournalReplayed, PeerDiscovered, TaskFinished
from meshgpu.core.tasks import Phase, Resolution, TaskId, TaskSpec
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.spec import DeviceRequirements
from meshgpu.core.types import NodeId
from tests.core.harness import MeshHarness
from tests.core.tasks.test_component import effects, submit

SPEC = TaskSpec("model-a", "input-1")


def harness(input_wait_s: float = 120.0) -> MeshHarness:
    config = MeshConfig(tasks=TaskConfig(gc_delay_s=1.0, input_wait_s=input_wait_s))
    h = MeshHarness(5, config=config, seed=3)
    h.run_until(3.0)
    assert h.views_agree()
    return h


def play_runs(h: MeshHarness, task_id: TaskId, seconds: float, ran: set[tuple[NodeId, int]]) -> int:
    """Answer every new run of ``task_id`` for ``seconds`` as its worker's driver would:
    done when a holder of the inputs is up, "inputs_unavailable" when none is. Returns how
    many runs were answered."""
    answered = 0
    end = h.now + seconds
    while h.now < end:
        h.run_until(h.now + 0.05)
        for _, node, effect in list(h.log):
            if not isinstance(effect, RunTask) or effect.task_id != task_id:
                continue
            if (node, effect.attempt) in ran or node in h.crashed:
                continue
            ran.add((node, effect.attempt))
            answered += 1
            up = tuple(n for n in effect.holders if n not in h.crashed)
            if up:
                event = TaskFinished(task_id, effect.attempt, "ok", "", up)
            else:
                reason = "inputs unavailable: no live holder"
                event = TaskFinished(task_id, effect.attempt, "inputs_unavailable", reason)
            h.deliver_event(node, event)
    return answered


def crash_holders(h: MeshHarness, task_id: TaskId) -> tuple[NodeId, ...]:
    entry = h.nodes[task_id.origin].tasks.table.get(task_id)
    assert entry is not None and len(entry.holders) == 2
    holders = tuple(sorted(entry.holders))
    for holder in holders:
        h.crash(holder)
    return holders


def test_holders_restarting_across_the_retry_window_cost_no_attempt() -> None:
    h = harness()
    task_id = submit(h, "n001", SPEC)
    holders = crash_holders(h, task_id)
    ran: set[tuple[NodeId, int]] = set()
    # Down for 4 s: declared dead on the way, far longer than the policy's four attempts
    # (0.1 + 0.2 + 0.4 s of back-off) take.
    play_runs(h, task_id, 4.0, ran)
    survivor = next(n for n in h.live())
    entry = h.nodes[survivor].tasks.table.get(task_id)
    assert entry is not None and not entry.state.terminal, entry.state
    for number, holder in enumerate(holders):  # back, each with its journal
        records = tuple(e.record for _, n, e in h.log if n == holder and isinstance(e, Persist))
        h.add_node(holder, incarnation=10 + number)
        h.deliver_event(holder, JournalReplayed(records))
        h.deliver_event(holder, PeerDiscovered(h.nodes[survivor].address, survivor))
    play_runs(h, task_id, 4.0, ran)
    # (the origin restarted: it tells its old client only when asked, so look at the table)
    entry = h.nodes[survivor].tasks.table.get(task_id)
    assert entry is not None and entry.state.phase is Phase.DONE, entry.state
    assert entry.state.failures == 0


def test_a_task_whose_holders_never_come_back_fails_after_the_wait_with_the_reason() -> None:
    h = harness(input_wait_s=3.0)
    task_id = submit(h, "n001", SPEC)
    holders = crash_holders(h, task_id)
    runs = play_runs(h, task_id, 8.0, set())
    entry = h.nodes[h.live()[0]].tasks.table.get(task_id)  # (its origin is gone)
    assert entry is not None and entry.state.phase is Phase.FAILED
    gone = ", ".join(f"{holder} dead" for holder in holders)
    assert entry.state.reason == f"inputs unavailable for 3 s: no holder of them is live ({gone})"
    assert entry.state.failures == 0
    # Runs only before the holders were declared dead: none after (the leader waits for a
    # holder to come back rather than have a worker find none).
    declared = max(t for t, _, e in h.member_changes("dead") if e.node_id in holders)
    late = [t for t, _, e in h.log if isinstance(e, RunTask) and t > declared]
    assert runs >= 1 and not late, late


def test_live_holders_that_serve_nothing_are_asked_with_back_off_then_the_task_fails() -> None:
    """Holders live in the membership whose data plane refuses (a daemon coming up): the
    waits do not count as attempts nor against the worker, grow by the task's policy, and
    end after ``input_wait_s``."""
    h = harness(input_wait_s=4.0)
    task_id = submit(h, "n001", SPEC)
    ran: set[tuple[NodeId, int]] = set()
    end = h.now + 6.0
    while h.now < end:
        h.run_until(h.now + 0.05)
        for _, node, effect in list(h.log):
            if isinstance(effect, RunTask) and (node, effect.attempt) not in ran:
                ran.add((node, effect.attempt))
                refused = TaskFinished(
                    task_id, effect.attempt, "inputs_unavailable", "n001: connection refused"
                )
                h.deliver_event(node, refused)
    (resolved,) = [e for e in effects(h, TaskResolved) if e.task_id == task_id]
    assert resolved.state is Resolution.FAILED
    assert resolved.reason == (
        "inputs unavailable for 4 s: waiting for inputs: n001: connection refused"
    )
    # back-off 0.1, 0.2, 0.4, 0.8, 1.6 s (jittered down by up to half): a handful of runs,
    # not one every round
    assert 4 <= len(ran) <= 9, ran
    entry = h.nodes["n001"].tasks.table.get(task_id)
    assert entry is not None and entry.state.phase is Phase.FAILED
    assert entry.state.failures == 0
    leader = h.nodes[h.live()[0]].leader()
    assert leader is not None
    breakers = h.nodes[leader].tasks.breakers
    assert all(breakers[node].admits(h.now) for node, _ in ran)


def test_a_worker_dying_mid_run_after_a_wait_for_inputs_is_retried_not_failed() -> None:
    """A wait for the inputs ends with the run that found them: its worker dying later
    (declared dead while the task is ASSIGNED to it) starts no failure for the inputs.
    The wait's clock once survived that death, and the task failed "inputs unavailable"
    the moment it was queued again, though its holders were live all along."""
    h = harness(input_wait_s=3.0)
    task_id = submit(h, "n001", SPEC)
    ran: set[tuple[NodeId, int]] = set()
    running: NodeId | None = None
    end = h.now + 2.0
    while running is None and h.now < end:
        h.run_until(h.now + 0.05)
        for _, node, effect in list(h.log):
            if not isinstance(effect, RunTask) or (node, effect.attempt) in ran:
                continue
            ran.add((node, effect.attempt))
            if len(ran) == 1:  # the first run finds no holder serving: a wait begins
                refused = TaskFinished(
                    task_id, effect.attempt, "inputs_unavailable", "n001: connection refused"
                )
                h.deliver_event(node, refused)
            else:  # the next one finds them, and runs longer than the wait's bound
                running = node
    assert running is not None, ran
    h.run_until(h.now + 4.0)
    h.crash(running)
    play_runs(h, task_id, 6.0, ran)
    entry = h.nodes["n001"].tasks.table.get(task_id)
    assert entry is not None and entry.state.phase is Phase.DONE, entry.state
    assert entry.state.failures == 0


def test_holders_back_end_the_wait_of_a_task_still_queued_for_a_worker() -> None:
    """A wait begun because no holder was live ends when one is again: a task that then
    waits for a worker (none can take it yet: here none has the memory it asks for; in a
    mesh, a backlog) is not failed for inputs its holders serve. The wait's clock once
    ran on, and the task failed "inputs unavailable ...: no holder served them" though no
    run had been tried and its holders had been live for seconds."""
    h = harness(input_wait_s=3.0)
    big = TaskSpec("model-a", "input-1", requirements=DeviceRequirements(min_memory=1 << 60))
    task_id = submit(h, "n001", big)
    holders = crash_holders(h, task_id)
    h.run_until(h.now + 2.5)  # declared dead: the leader's wait has begun
    survivor = next(n for n in h.live())
    for number, holder in enumerate(holders):  # back, each with its journal
        records = tuple(e.record for _, n, e in h.log if n == holder and isinstance(e, Persist))
        h.add_node(holder, incarnation=10 + number)
        h.deliver_event(holder, JournalReplayed(records))
        h.deliver_event(holder, PeerDiscovered(h.nodes[survivor].address, survivor))
    h.run_until(h.now + 6.0)
    resolved = [e for e in effects(h, TaskResolved) if e.task_id == task_id]
    assert not resolved, resolved
    entry = h.nodes[holders[0]].tasks.table.get(task_id)
    assert entry is not None and entry.state.phase is Phase.PENDING, entry
    assert not [e for e in effects(h, RunTask) if e.task_id == task_id]
