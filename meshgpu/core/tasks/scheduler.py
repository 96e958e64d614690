"""One scheduling round of the leader: walk the queue in order, ask each task's strategy for
a worker, and never hand a worker more than its free slots.

Priority is strict with backfilling: when a task of priority P cannot be placed now (no
capable worker has a free slot, or its strategy chose to wait), every worker capable of it
is *reserved* against tasks of lower priority for the rest of the round; lower-priority
tasks may still use workers that could never run it. This is what makes design.md
invariant 9 hold ("a higher-priority task is never assigned after a lower one that was
queued later on the same leader", read as: never on a worker that could have taken it),
without idling CPU workers behind a GPU-only task. Tasks of the same priority are
considered in FIFO order and do not block each other.

A task that has just failed on a worker avoids that worker when any other can take it.
A task that prefers labels goes to a worker carrying them when one can take it now.
A task with large inputs (``LOCAL_INPUT_ELEMENTS``) goes to one of its holders when one can
take it now: the holder reads the inputs from its own disk, where any other worker first
pulls them whole over the network. Among the holders its origin comes first when it can
take the task now: the origin received the client's upload, and it alone keeps the arrays
it received in memory for the run (the daemon's warm inputs), where another holder reads
its copy back from the disk. Rejected: every holder keeping a warm copy (all but one of
them fill a GiB of fresh memory that no run takes: a fifth of a receiving node's CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from meshgpu.core.tasks.spec import Priority, TaskId, TaskSpec
from meshgpu.core.tasks.strategies import (
    STRATEGIES,
    SelectionContext,
    Strategy,
    WorkerView,
    capable,
    preferred,
    strategy_named,
)
from meshgpu.core.types import NodeId

LOCAL_INPUT_ELEMENTS = 1 << 22
"""Input elements from which a task goes to a holder of its inputs when one can take it
(4 Mi elements: 16 MiB of float32, one range of the data plane; every simulated workload
is below it). Below it the transfer costs less than a worse-placed run."""


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A task ready for assignment, with the worker it should avoid (last failure) and the
    nodes holding its inputs."""

    task_id: TaskId
    spec: TaskSpec
    avoid: NodeId | None = None
    holders: frozenset[NodeId] = field(default_factory=frozenset)


def large_inputs(spec: TaskSpec) -> bool:
    """Whether the task's inputs hold ``LOCAL_INPUT_ELEMENTS`` elements or more."""
    return sum(math.prod(shape) for _, shape in spec.input_shapes) >= LOCAL_INPUT_ELEMENTS


@dataclass(frozen=True, slots=True)
class Assignment:
    """The round's decision for one task."""

    task_id: TaskId
    worker: NodeId


def plan_round(
    tasks: Sequence[QueuedTask],
    workers: Sequence[WorkerView],
    default_strategy: str,
    context: SelectionContext,
) -> list[Assignment]:
    """Assignments for this round, in queue order. ``tasks`` must come highest priority
    first, FIFO within a priority. Updates ``context.rotation`` after each assignment."""
    views: dict[NodeId, WorkerView] = {
        w.node_id: w for w in sorted(workers, key=lambda w: w.node_id)
    }
    order = list(views)
    reserved_below: dict[NodeId, Priority] = {}  # worker -> highest blocked priority
    assignments: list[Assignment] = []
    context.deferred.clear()
    for task in tasks:
        if not any(v.free_slots > 0 and v.admits for v in views.values()):
            break
        priority = task.spec.priority
        allowed = [
            v
            for v in views.values()
            if v.node_id not in reserved_below or reserved_below[v.node_id] <= priority
        ]
        name = task.spec.strategy or default_strategy
        # A spec is validated where it is submitted; a name this node does not know
        # (a newer peer) falls back to the mesh default rather than stalling the queue.
        strategy = STRATEGIES.get(name) or strategy_named(default_strategy)
        deferred = dict(context.deferred)
        choice: NodeId | None = None
        prefer = task.spec.requirements.prefer
        if prefer:
            # Soft labels: the strategy picks among the preferred workers first, and
            # among all of them only when no preferred one can take the task now.
            liked = [v for v in allowed if preferred(v, task.spec.requirements)]
            if task.avoid is not None:
                others = [v for v in liked if v.node_id != task.avoid]
                choice = _offer(strategy, task.spec, others, context, deferred)
            if choice is None and liked:
                choice = _offer(strategy, task.spec, liked, context, deferred)
        if choice is None and not prefer and task.holders and large_inputs(task.spec):
            # Locality: a holder reads the inputs where they lie; another worker would
            # pull them whole first.
            local = [v for v in allowed if v.node_id in task.holders and v.node_id != task.avoid]
            origin = [v for v in local if v.node_id == task.task_id.origin]
            if origin:
                choice = _offer(strategy, task.spec, origin, context, deferred)
            if choice is None and local:
                choice = _offer(strategy, task.spec, local, context, deferred)
        if choice is None and task.avoid is not None:
            others = [v for v in allowed if v.node_id != task.avoid]
            choice = _offer(strategy, task.spec, others, context, deferred)
        if choice is None:
            choice = _offer(strategy, task.spec, allowed, context, deferred)
        if choice is None:
            for v in views.values():
                if capable(v, task.spec.requirements):
                    held = reserved_below.get(v.node_id)
                    if held is None or held < priority:
                        reserved_below[v.node_id] = priority
            continue
        chosen = views[choice]
        views[choice] = replace(chosen, in_flight=chosen.in_flight + 1)
        context.rotation = order.index(choice) + 1
        assignments.append(Assignment(task.task_id, choice))
    return assignments


def _offer(
    strategy: Strategy,
    spec: TaskSpec,
    among: Sequence[WorkerView],
    context: SelectionContext,
    deferred: dict[NodeId, int],
) -> NodeId | None:
    """Offer a task to ``among``. A task is offered to several sets of workers in turn
    (the preferred ones, its holders, all but the one it failed on, all); each offer
    starts from the round's waits as they were before the task (``deferred``), so only
    the last offer's wait counts: an adaptive strategy that chose to wait for a busy
    worker on an earlier offer would otherwise count the one task as waiting twice (or
    as waiting for a worker although a later offer placed it elsewhere)."""
    if context.deferred != deferred:
        context.deferred.clear()
        context.deferred.update(deferred)
    return strategy(spec, among, context)
