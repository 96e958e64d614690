"""Balancing strategies: pure functions from (task spec, worker views, context) to a worker.

A :class:`WorkerView` is what the leader knows about one live worker: its gossiped load
vector (capacity, utilisation, memory, queue length, capabilities, published per-model
latency) plus the number of tasks the leader's own table shows ASSIGNED to it
(``in_flight``, fresher than any gossip). Every strategy

* only ever picks a worker that is *capable* (device type, memory, fp16, required
  labels), has a *free slot*
  (``capacity - in_flight > 0``) and whose circuit breaker *admits* work;
* may return None: nothing suitable now (the task stays queued);
* breaks ties in rotating order (``context.rotation``), so equal idle workers get work
  evenly instead of the lowest id getting everything.

Selectable per mesh (config) and per task (``spec.strategy``) by the names in
:data:`STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshgpu.core.tasks.adaptive import LatencyModel
from meshgpu.core.tasks.spec import DeviceRequirements, TaskSpec
from meshgpu.core.types import NodeId
from meshgpu.errors import ConfigError

LEAST_LOADED_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
"""Weights of (active tasks, utilisation, memory, queue length), design.md section 3."""


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One live worker as the leader sees it when it assigns."""

    node_id: NodeId
    capacity: int
    in_flight: int = 0
    utilisation: float = 0.0
    memory_used: int = 0
    memory_total: int = 0
    queue_length: int = 0
    device_types: tuple[str, ...] = ()
    fp16: bool = False
    latency_estimates: tuple[tuple[str, float], ...] = ()
    admits: bool = True
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - self.in_flight)

    def published_latency(self, model: str) -> float | None:
        """The worker's own latency estimate for ``model`` from its load vector."""
        for digest, seconds in self.latency_estimates:
            if digest == model:
                return seconds
        return None


@dataclass(slots=True)
class SelectionContext:
    """Per-leader state a strategy may read: the rotation cursor for round-robin and ties,
    the adaptive model, and how many tasks this round already chose to wait for a worker."""

    rotation: int = 0
    learned: LatencyModel = field(default_factory=LatencyModel)
    deferred: dict[NodeId, int] = field(default_factory=dict)
    assigned: dict[NodeId, int] = field(default_factory=dict)
    """Assignments to each worker that this node has seen while it led (every one of its
    terms, and the open ones handed over to it), used to break ties fairly."""


Strategy = Callable[[TaskSpec, Sequence[WorkerView], SelectionContext], NodeId | None]


def capable(worker: WorkerView, requirements: DeviceRequirements) -> bool:
    """Does ``worker`` meet the task's hard requirements?"""
    if requirements.device_type is not None and requirements.device_type not in (
        worker.device_types
    ):
        return False
    if requirements.min_memory and worker.memory_total < requirements.min_memory:
        return False
    if requirements.fp16 and not worker.fp16:
        return False
    return not requirements.unmet(worker.labels)


def preferred(worker: WorkerView, requirements: DeviceRequirements) -> bool:
    """Does ``worker`` carry every label the task prefers?"""
    have = set(worker.labels)
    return all(pair in have for pair in requirements.prefer)


def may_run_at_entry(worker: WorkerView, requirements: DeviceRequirements) -> bool:
    """May the node a client submitted to run the task itself, without the leader (a
    direct run, daemon/direct.py)? Only if it meets the hard requirements and the task
    prefers no labels: the leader, which sees every node's labels, picks where a
    preference is best met."""
    return capable(worker, requirements) and not requirements.prefer


def eligible(spec: TaskSpec, workers: Sequence[WorkerView]) -> list[WorkerView]:
    """Workers that may take the task now: capable, a free slot, breaker admits."""
    return [w for w in workers if w.free_slots > 0 and w.admits and capable(w, spec.requirements)]


def _rotated(workers: Sequence[WorkerView], rotation: int) -> list[WorkerView]:
    """``workers`` (sorted by id) starting at the rotation cursor, wrapping around."""
    ordered = sorted(workers, key=lambda w: w.node_id)
    if not ordered:
        return ordered
    start = rotation % len(ordered)
    return ordered[start:] + ordered[:start]


def _lowest(
    candidates: list[WorkerView], score: Callable[[WorkerView], float], ctx: SelectionContext
) -> NodeId:
    """The best-scoring candidate; ties go to the worker given the fewest tasks so far, then
    to the first in rotated order (min() keeps the first of equal keys)."""
    return min(candidates, key=lambda w: (score(w), ctx.assigned.get(w.node_id, 0))).node_id


def round_robin(
    spec: TaskSpec, workers: Sequence[WorkerView], ctx: SelectionContext
) -> NodeId | None:
    """The next eligible worker after the last one chosen, in id order."""
    candidates = eligible(spec, _rotated(workers, ctx.rotation))
    return candidates[0].node_id if candidates else None


def least_loaded_score(worker: WorkerView, max_queue: int) -> float:
    """0.4 active + 0.3 utilisation + 0.2 memory + 0.1 queue, each normalised to [0, 1]."""
    w_active, w_util, w_memory, w_queue = LEAST_LOADED_WEIGHTS
    active = worker.in_flight / worker.capacity if worker.capacity else 1.0
    memory = worker.memory_used / worker.memory_total if worker.memory_total else 0.0
    queue = worker.queue_length / max_queue if max_queue else 0.0
    utilisation = min(1.0, max(0.0, worker.utilisation))
    return w_active * active + w_util * utilisation + w_memory * memory + w_queue * queue


def least_loaded(
    spec: TaskSpec, workers: Sequence[WorkerView], ctx: SelectionContext
) -> NodeId | None:
    """The eligible worker with the lowest weighted load score."""
    candidates = eligible(spec, _rotated(workers, ctx.rotation))
    if not candidates:
        return None
    max_queue = max(w.queue_length for w in workers)
    return _lowest(candidates, lambda w: least_loaded_score(w, max_queue), ctx)


def device_match(
    spec: TaskSpec, workers: Sequence[WorkerView], ctx: SelectionContext
) -> NodeId | None:
    """Best device fit: a GPU unless the task asks for a CPU, then the most free device
    memory, then fp16 when asked, then least loaded."""
    candidates = eligible(spec, _rotated(workers, ctx.rotation))
    if not candidates:
        return None
    wanted = spec.requirements.device_type or "gpu"
    max_queue = max(w.queue_length for w in workers)

    def fit(w: WorkerView) -> tuple[int, float, int, float, int]:
        free_memory = (w.memory_total - w.memory_used) / w.memory_total if w.memory_total else 0
        return (
            0 if wanted in w.device_types else 1,
            -free_memory,
            0 if w.fp16 or not spec.requirements.fp16 else 1,
            least_loaded_score(w, max_queue),
            ctx.assigned.get(w.node_id, 0),
        )

    return min(candidates, key=fit).node_id


def _optimistic(values: list[float]) -> float:
    """Stand-in for an unknown estimate: the best known one, so new workers get tried."""
    return min(values) if values else 0.0


def latency_based(
    spec: TaskSpec, workers: Sequence[WorkerView], ctx: SelectionContext
) -> NodeId | None:
    """The eligible worker whose own published latency for the model is lowest. A worker
    with no estimate yet counts as instantaneous, so it is tried (and then publishes one)."""
    candidates = eligible(spec, _rotated(workers, ctx.rotation))
    if not candidates:
        return None
    fallback = 0.0

    def expected(w: WorkerView) -> float:
        published = w.published_latency(spec.model_digest)
        base = fallback if published is None else published
        return base * (1.0 + 0.01 * (w.in_flight / w.capacity if w.capacity else 1.0))

    return _lowest(candidates, expected, ctx)


PUBLISHED_WEIGHT = 2.0
"""How many learned samples the worker's own published estimate is worth in the blend."""


def adaptive_cost(worker: WorkerView, model: str, ctx: SelectionContext, fallback: float) -> float:
    """Expected seconds to complete on ``worker`` once it runs, inflated by its learned
    failure rate. The latency is the learned end-to-end latency blended with the worker's
    own published (warm) execution estimate, weighted by how many samples were learned:
    a first observation that paid a model download does not condemn a worker for good."""
    learned = ctx.learned.latency(worker.node_id, model)
    samples = ctx.learned.samples(worker.node_id, model)
    published = worker.published_latency(model)
    if learned is None and published is None:
        base = fallback
    elif learned is None:
        base = published  # type: ignore[assignment]
    elif published is None:
        base = learned
    else:
        base = (samples * learned + PUBLISHED_WEIGHT * published) / (samples + PUBLISHED_WEIGHT)
    return base / (1.0 - min(ctx.learned.failure_rate(worker.node_id, model), 0.9))


def adaptive(spec: TaskSpec, workers: Sequence[WorkerView], ctx: SelectionContext) -> NodeId | None:
    """Minimise expected completion time, learning from what the mesh observed.

    For a worker with a free slot the expected completion is its cost; for a busy capable
    worker it is the wait for a slot (cost x (tasks already waiting for it + 1) / capacity,
    the mean time until one of ``capacity`` slots frees) plus its cost. If a busy worker
    wins, the task waits for it (returns None and counts itself in ``ctx.deferred``)
    rather than going to a much slower free worker now.
    """
    model = spec.model_digest
    usable = [
        w for w in _rotated(workers, ctx.rotation) if w.admits and capable(w, spec.requirements)
    ]
    if not usable:
        return None
    known = [
        c
        for w in usable
        if (c := ctx.learned.latency(w.node_id, model) or w.published_latency(model)) is not None
    ]
    fallback = _optimistic(known)
    best_free: tuple[float, NodeId] | None = None
    best_busy: tuple[float, NodeId] | None = None
    for w in usable:
        cost = adaptive_cost(w, model, ctx, fallback)
        if w.free_slots > 0:
            if best_free is None or cost < best_free[0]:
                best_free = (cost, w.node_id)
        elif w.capacity > 0:
            waiting = ctx.deferred.get(w.node_id, 0) + 1
            total = cost + cost * waiting / w.capacity
            if best_busy is None or total < best_busy[0]:
                best_busy = (total, w.node_id)
    if best_busy is not None and (best_free is None or best_busy[0] < best_free[0]):
        ctx.deferred[best_busy[1]] = ctx.deferred.get(best_busy[1], 0) + 1
        return None
    return None if best_free is None else best_free[1]


def binpack(spec: TaskSpec, workers: Sequence[WorkerView], ctx: SelectionContext) -> NodeId | None:
    """Fill the fewest workers: the eligible worker with the most tasks in flight (it
    already has the model warm and its device busy), ties to the lowest id, so that at
    low load the other workers stay idle (free for large jobs, or to sleep)."""
    candidates = eligible(spec, workers)
    if not candidates:
        return None
    return min(candidates, key=lambda w: (-w.in_flight, w.node_id)).node_id


def spread(spec: TaskSpec, workers: Sequence[WorkerView], ctx: SelectionContext) -> NodeId | None:
    """Even out the work: the eligible worker with the lowest share of its slots in use,
    ties to the one given the fewest tasks so far, so per-worker counts stay level."""
    candidates = eligible(spec, _rotated(workers, ctx.rotation))
    if not candidates:
        return None
    return _lowest(candidates, lambda w: w.in_flight / w.capacity if w.capacity else 1.0, ctx)


STRATEGIES: dict[str, Strategy] = {
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "device_match": device_match,
    "latency": latency_based,
    "adaptive": adaptive,
    "binpack": binpack,
    "spread": spread,
}
"""Strategy names, as used in the config (``[tasks] strategy``) and ``spec.strategy``."""


def strategy_named(name: str) -> Strategy:
    """Look a strategy up by name; raises :class:`ConfigError` naming the choices."""
    try:
        return STRATEGIES[name]
    except KeyError:
        choices = ", ".join(sorted(STRATEGIES))
        raise ConfigError(f"unknown balancing strategy {name!r}: choose one of {choices}") from None
