"""Work stealing: an idle worker takes over tasks queued on a busy one, never a started one.

A worker accepts more tasks than its device runs at once (the daemon prefetches one per
slot: inputs and model fetched while the slot is busy). In a lab of mixed devices that
queue is where the tail latency comes from: a task waits behind a slow card's current
run while a fast card next to it has nothing to do. Stealing moves such a task, once the
leader sees the imbalance, without ever moving one that is on a device.

The rules, and who applies each:

1. **The worker marks what it started.** When the driver puts an attempt on the device it
   feeds ``TaskStarted``; the worker sets the entry's ``started`` mark (the attempt number,
   merged by max) and sends that mark to the leader alone (``interest.py``).
2. **The leader proposes** (:func:`plan_steals`, every leader round): a task ASSIGNED to a
   worker that has started at least one task (its device is busy) and has not started
   this one, with no steal requested for this attempt yet, goes to an *idle* capable
   worker (no task assigned to it, breaker admits, device, memory, fp16 and required
   labels met) when the thief would finish it sooner than the victim: with ``k`` tasks
   started on the victim, the ``i``-th queued task (oldest first) finishes there after
   about ``(i // k + 2)`` runs, on the thief after ``j + 1`` (``j`` tasks it already took
   this round), each run costing the node's published latency for the model (an unknown
   one is taken equal to the other side's). The proposal is a replicated ``steal`` mark
   ``(attempt, thief)`` on the entry; it moves nothing by itself.
3. **The victim decides.** On the steal mark, the worker of that attempt hands it to the
   thief (``state.steal``: ASSIGNED(attempt + 1, thief), a move up the lattice) only if
   the attempt is still its own and not started; otherwise it refuses (nothing changes,
   the mark stays, the leader never asks again for that attempt). Its own run of the
   attempt, waiting for a slot, is cancelled by the state change as for any superseded
   attempt.

Why the victim and not the leader: only the victim knows, at the moment it decides,
whether the attempt is on its device; had the leader reassigned directly, a start and a
reassignment made concurrently would both stand after the merge and a started run would
be thrown away (or run twice). This is Dask's transactional stealing (the scheduler asks,
the worker confirms only a task it has not started) expressed in the table: the request
and the release are entries' fields and states, so they survive loss, partitions and
leader changes like any other change, and the merge rules order every race:

* the worker's start against the request: the worker handles both in order, so whichever
  reached it first wins (start first: refused; request first: released, and the driver's
  later start report is ignored, counted as ``task_starts_superseded``);
* the release against the leader's own moves (a timeout, a reassignment after a death):
  the join keeps the higher state; the stolen attempt is ``attempt + 1``, so a competing
  reassignment of the same attempt by the leader resolves by the usual order and a task
  can be run twice at worst (at-least-once execution), never delivered twice.

Delivery stays exactly once per task id: a steal changes who runs an attempt, not the
entry's identity or its delivered mark. A steal is not a failure of the victim: breakers
and the adaptive model do not count it (``scheduling_inputs.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshgpu.core.tasks.spec import TaskId, TaskSpec
from meshgpu.core.tasks.strategies import WorkerView, capable
from meshgpu.core.types import NodeId


@dataclass(frozen=True, slots=True)
class AssignedTask:
    """One open task ASSIGNED to a live worker, as the leader sees it."""

    task_id: TaskId
    spec: TaskSpec
    worker: NodeId
    attempt: int
    started: bool
    """The worker marked this attempt started."""
    requested: bool
    """A steal of this attempt was requested already (it is never requested twice)."""
    since: float
    """When the leader saw this attempt assigned (queue order on the worker)."""


@dataclass(frozen=True, slots=True)
class Steal:
    """The leader's request that ``victim`` hand ``attempt`` of ``task_id`` to ``thief``."""

    task_id: TaskId
    attempt: int
    victim: NodeId
    thief: NodeId


def plan_steals(
    assigned: Sequence[AssignedTask],
    workers: Sequence[WorkerView],
    settled_before: float,
) -> list[Steal]:
    """The steals of one leader round (rule 2 of the module docstring). ``workers`` are
    the live workers with ``in_flight`` as the table shows them, the requested steals not
    yet answered counted for their thieves (such a thief is not idle). Only tasks
    assigned before ``settled_before`` are candidates: a younger one may be taking a free
    slot at this moment, its started mark still on the way."""
    views = {w.node_id: w for w in workers}
    thieves = sorted(
        (w for w in workers if w.admits and w.capacity > 0 and w.in_flight == 0),
        key=lambda w: w.node_id,
    )
    if not thieves:
        return []
    started: dict[NodeId, int] = {}
    queued: dict[NodeId, list[AssignedTask]] = {}
    for task in assigned:
        if task.started:
            started[task.worker] = started.get(task.worker, 0) + 1
        elif not task.requested and task.since <= settled_before:
            queued.setdefault(task.worker, []).append(task)
    candidates: list[tuple[float, AssignedTask]] = []
    for victim, tasks in queued.items():
        running = started.get(victim, 0)
        view = views.get(victim)
        if running == 0 or view is None:
            continue  # nothing on its device: what it holds is about to start, not queued
        tasks.sort(key=lambda t: (t.since, t.task_id))
        for position, task in enumerate(tasks):
            ahead = position // running + 1  # runs on its device before it gets a turn
            candidates.append((float(ahead + 1), task))
    if not candidates:
        return []
    given: dict[NodeId, int] = {}
    steals: list[Steal] = []
    # The task that would finish last on its victim first: it gains the most.
    candidates.sort(key=lambda c: (-_victim_finish(c[1], c[0], views), c[1].task_id))
    for runs, task in candidates:
        victim_run = views[task.worker].published_latency(task.spec.model_digest)
        best: tuple[float, NodeId] | None = None
        for thief in thieves:
            taken = given.get(thief.node_id, 0)
            if taken >= thief.capacity or not capable(thief, task.spec.requirements):
                continue
            thief_run = thief.published_latency(task.spec.model_digest)
            own, theirs = _comparable(thief_run, victim_run)
            finish = float(taken + 1) * own
            if finish < runs * theirs and (best is None or (finish, thief.node_id) < best):
                best = (finish, thief.node_id)
        if best is None:
            continue
        given[best[1]] = given.get(best[1], 0) + 1
        steals.append(Steal(task.task_id, task.attempt, task.worker, best[1]))
    return steals


def _comparable(thief_run: float | None, victim_run: float | None) -> tuple[float, float]:
    """Both runs' expected seconds, an unknown one taken equal to the other (both unknown:
    one unit each, so only the queue's length decides)."""
    if thief_run is None and victim_run is None:
        return 1.0, 1.0
    if thief_run is None:
        assert victim_run is not None
        return victim_run, victim_run
    if victim_run is None:
        return thief_run, thief_run
    return thief_run, victim_run


def _victim_finish(task: AssignedTask, runs: float, views: dict[NodeId, WorkerView]) -> float:
    run = views[task.worker].published_latency(task.spec.model_digest)
    return runs * (1.0 if run is None else run)
