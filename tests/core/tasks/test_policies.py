"""Unit tests of the priority queue, retry policies, the circuit breaker, the balancing
strategies and the scheduling round."""

from __future__ import annotations

import random

import pytest

from meshgpu.core.tasks import (
    BackoffKind,
    DeviceRequirements,
    Priority,
    RetryPolicy,
    TaskId,
    TaskSpec,
)
from meshgpu.core.tasks.adaptive import LatencyModel
from meshgpu.core.tasks.breaker import BreakerSettings, BreakerState, CircuitBreaker
from meshgpu.core.tasks.queue import TaskQueue
from meshgpu.core.tasks.scheduler import QueuedTask, plan_round
from meshgpu.core.tasks.strategies import (
    STRATEGIES,
    SelectionContext,
    WorkerView,
    adaptive,
    device_match,
    latency_based,
    least_loaded,
    least_loaded_score,
    round_robin,
    strategy_named,
)
from meshgpu.errors import ConfigError, TaskError


def tid(n: int) -> TaskId:
    return TaskId("o", n)


def test_queue_priority_then_fifo_and_retry_keeps_place() -> None:
    q = TaskQueue()
    q.push(tid(1), Priority.LOW)
    q.push(tid(2), Priority.NORMAL)
    q.push(tid(3), Priority.CRITICAL)
    q.push(tid(4), Priority.NORMAL)
    q.push(tid(5), Priority.HIGH)
    assert list(q) == [tid(3), tid(5), tid(2), tid(4), tid(1)]
    q.remove(tid(2))
    q.push(tid(6), Priority.NORMAL)
    q.push(tid(2), Priority.NORMAL)  # a retry comes back to its original place
    assert list(q) == [tid(3), tid(5), tid(2), tid(4), tid(6), tid(1)]
    q.push(tid(4), Priority.NORMAL)  # already queued: no-op
    assert len(q) == 6 and q.lengths()[Priority.NORMAL] == 3


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (BackoffKind.FIXED, [1.0, 1.0, 1.0, 1.0]),
        (BackoffKind.LINEAR, [1.0, 2.0, 3.0, 4.0]),
        (BackoffKind.EXPONENTIAL, [1.0, 2.0, 4.0, 5.0]),
    ],
)
def test_retry_delays_without_jitter(kind: BackoffKind, expected: list[float]) -> None:
    policy = RetryPolicy(kind, base_s=1.0, max_s=5.0, max_attempts=3, jitter=0.0)
    rng = random.Random(0)
    assert [policy.delay(n, rng) for n in (1, 2, 3, 4)] == expected
    assert not policy.exhausted(2) and policy.exhausted(3)


def test_retry_jitter_stays_in_band_and_is_seeded() -> None:
    policy = RetryPolicy(BackoffKind.EXPONENTIAL, base_s=1.0, max_s=100.0, jitter=0.5)
    delays = [policy.delay(4, random.Random(seed)) for seed in range(50)]
    assert all(4.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 40
    assert policy.delay(4, random.Random(7)) == policy.delay(4, random.Random(7))
    with pytest.raises(TaskError):
        RetryPolicy(max_attempts=0)


def test_breaker_opens_half_opens_and_closes() -> None:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=2, open_s=10.0))
    breaker.on_failure(0.0)
    assert breaker.admits(0.0)
    breaker.on_failure(1.0)
    assert breaker.state is BreakerState.OPEN and not breaker.admits(5.0)
    assert breaker.admits(11.0) and breaker.state is BreakerState.HALF_OPEN
    breaker.on_assigned(11.0)
    assert not breaker.admits(11.5)  # one trial at a time
    breaker.on_failure(12.0)
    assert breaker.state is BreakerState.OPEN and not breaker.admits(21.0)
    assert breaker.admits(22.0)
    breaker.on_success(23.0)
    assert breaker.state is BreakerState.CLOSED and breaker.admits(23.0)


def test_success_resets_consecutive_failures() -> None:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=2))
    breaker.on_failure(0.0)
    breaker.on_success(0.1)
    breaker.on_failure(0.2)
    assert breaker.state is BreakerState.CLOSED


SPEC = TaskSpec("model-a", "in")


def worker(name: str, **kw: object) -> WorkerView:
    defaults: dict[str, object] = {"capacity": 2, "device_types": ("gpu",)}
    defaults.update(kw)
    return WorkerView(name, **defaults)  # type: ignore[arg-type]


def test_every_strategy_respects_free_slots_requirements_and_breaker() -> None:
    workers = [
        worker("a", in_flight=2),  # full
        worker("b", admits=False),  # breaker open
        worker("c", device_types=("cpu",)),  # not capable
        worker("d", in_flight=1),
    ]
    spec = TaskSpec("model-a", "in", requirements=DeviceRequirements(device_type="gpu"))
    for name, strategy in STRATEGIES.items():
        assert strategy(spec, workers, SelectionContext()) == "d", name
    assert all(s(spec, workers[:3], SelectionContext()) is None for s in STRATEGIES.values())


def test_round_robin_rotates() -> None:
    workers = [worker("a"), worker("b"), worker("c")]
    ctx = SelectionContext(rotation=1)
    assert round_robin(SPEC, workers, ctx) == "b"
    ctx.rotation = 3
    assert round_robin(SPEC, workers, ctx) == "a"


def test_least_loaded_uses_the_weighted_score() -> None:
    busy_gpu = worker("a", in_flight=1, utilisation=0.0)  # 0.4 * 0.5 = 0.2
    hot = worker("b", utilisation=0.9)  # 0.3 * 0.9 = 0.27
    assert least_loaded_score(busy_gpu, 0) == pytest.approx(0.2)
    assert least_loaded(SPEC, [busy_gpu, hot], SelectionContext()) == "a"
    full_memory = worker("c", memory_used=9, memory_total=10, queue_length=4)
    assert least_loaded_score(full_memory, 4) == pytest.approx(0.2 * 0.9 + 0.1)


def test_least_loaded_breaks_ties_in_rotation() -> None:
    workers = [worker("a"), worker("b"), worker("c")]
    picks = []
    ctx = SelectionContext()
    for _ in range(6):
        choice = least_loaded(SPEC, workers, ctx)
        assert choice is not None
        picks.append(choice)
        ctx.rotation = "abc".index(choice) + 1
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_device_match_prefers_gpu_then_free_memory_then_fp16() -> None:
    cpu = worker("a", device_types=("cpu",))
    small = worker("b", memory_used=6, memory_total=8)
    roomy = worker("c", memory_used=1, memory_total=8)
    assert device_match(SPEC, [cpu, small, roomy], SelectionContext()) == "c"
    cpu_task = TaskSpec("m", "i", requirements=DeviceRequirements(device_type="cpu"))
    assert device_match(cpu_task, [cpu, small, roomy], SelectionContext()) == "a"
    fp16_task = TaskSpec("m", "i", requirements=DeviceRequirements(fp16=True))
    half = worker("d", fp16=True, memory_used=7, memory_total=8)
    assert device_match(fp16_task, [small, roomy, half], SelectionContext()) == "d"


def test_latency_based_uses_published_estimates_and_tries_unknown() -> None:
    slow = worker("a", latency_estimates=(("model-a", 0.5),))
    fast = worker("b", latency_estimates=(("model-a", 0.1),))
    assert latency_based(SPEC, [slow, fast], SelectionContext()) == "b"
    unknown = worker("c")
    assert latency_based(SPEC, [slow, unknown], SelectionContext()) == "c"


def test_adaptive_learns_and_waits_for_a_much_faster_worker() -> None:
    learned = LatencyModel(alpha=0.5)
    for _ in range(3):
        learned.observe_success("fast", "model-a", 0.1)
        learned.observe_success("slow", "model-a", 1.0)
    fast_busy = worker("fast", in_flight=2)
    slow_free = worker("slow")
    ctx = SelectionContext(learned=learned)
    assert adaptive(SPEC, [fast_busy, slow_free], ctx) is None  # waits for "fast"
    assert ctx.deferred == {"fast": 1}
    for _ in range(20):
        adaptive(SPEC, [fast_busy, slow_free], ctx)
    assert adaptive(SPEC, [fast_busy, slow_free], ctx) == "slow"  # the wait grew too long
    ctx.deferred.clear()
    assert adaptive(SPEC, [worker("fast"), slow_free], ctx) == "fast"


def test_adaptive_avoids_a_failing_worker() -> None:
    learned = LatencyModel(alpha=0.5)
    learned.observe_success("a", "model-a", 0.1)
    learned.observe_success("b", "model-a", 0.15)
    for _ in range(4):
        learned.observe_failure("a", "model-a")
    ctx = SelectionContext(learned=learned)
    assert adaptive(SPEC, [worker("a"), worker("b")], ctx) == "b"


def test_unknown_strategy_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="least_loaded"):
        strategy_named("fastest")


def queued(n: int, priority: Priority, **kw: object) -> QueuedTask:
    spec = TaskSpec("model-a", f"in-{n}", priority=priority, **kw)  # type: ignore[arg-type]
    return QueuedTask(tid(n), spec)


def test_round_never_exceeds_free_slots() -> None:
    tasks = [queued(n, Priority.NORMAL) for n in range(10)]
    workers = [worker("a", capacity=2), worker("b", capacity=3, in_flight=1)]
    plan = plan_round(tasks, workers, "least_loaded", SelectionContext())
    counts = {w: sum(1 for a in plan if a.worker == w) for w in "ab"}
    assert counts == {"a": 2, "b": 2} and [a.task_id for a in plan] == [tid(n) for n in range(4)]


def test_blocked_high_priority_reserves_capable_workers_only() -> None:
    gpu_task = queued(1, Priority.HIGH, requirements=DeviceRequirements(device_type="gpu"))
    low_any = queued(2, Priority.LOW)
    workers = [worker("gpu", in_flight=2), worker("cpu", device_types=("cpu",))]
    plan = plan_round([gpu_task, low_any], workers, "least_loaded", SelectionContext())
    assert [(a.task_id, a.worker) for a in plan] == [(tid(2), "cpu")]
    # A lower-priority task never takes a worker the blocked task could have used.
    workers = [
        worker("gpu", in_flight=2),
        worker("gpu2", in_flight=2),
        worker("cpu", capacity=1, device_types=("cpu", "gpu")),
    ]
    gpu_task2 = queued(3, Priority.HIGH, requirements=DeviceRequirements(device_type="gpu"))
    plan = plan_round([gpu_task2, low_any], workers, "round_robin", SelectionContext())
    assert [a.task_id for a in plan] == [tid(3)]


def test_retry_avoids_the_failed_worker_when_it_can() -> None:
    task = QueuedTask(tid(1), TaskSpec("m", "i"), avoid="a")
    plan = plan_round([task], [worker("a"), worker("b")], "round_robin", SelectionContext())
    assert plan[0].worker == "b"
    plan = plan_round([task], [worker("a")], "round_robin", SelectionContext())
    assert plan[0].worker == "a"


def test_a_task_offered_twice_counts_as_waiting_once() -> None:
    """A retried task is offered to the workers but the one it failed on, then to all:
    an adaptive strategy that chose to wait for a busy fast worker both times counts the
    task once among that worker's waiting tasks, as a task offered once does."""
    learned = LatencyModel(alpha=0.5)
    for _ in range(3):
        learned.observe_success("fast", "model-a", 0.1)
        learned.observe_success("slow", "model-a", 1.0)
    workers = [worker("fast", in_flight=2), worker("slow"), worker("x", in_flight=2)]
    retried = QueuedTask(tid(1), TaskSpec("model-a", "in", strategy="adaptive"), avoid="x")
    fresh = QueuedTask(tid(2), TaskSpec("model-a", "in", strategy="adaptive"))
    for task in (retried, fresh):
        ctx = SelectionContext(learned=learned)
        assert plan_round([task], workers, "adaptive", ctx) == []  # waits for "fast"
        assert ctx.deferred == {"fast": 1}
