"""Workloads, device profiles, the task driver's settings and the priority checker."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from meshgpu.core.tasks import DeviceRequirements, Priority, TaskId
from meshgpu.core.tasks.leading import AssignmentRecord
from meshgpu.errors import ConfigError
from meshgpu.sim.devices import BUILTIN_CLASSES, device_classes, lab_layout
from meshgpu.sim.task_driver import TaskSimSettings
from meshgpu.sim.task_metrics import TaskMetrics, percentile
from meshgpu.sim.workload import Burst, Workload


def test_poisson_arrivals_are_seeded_and_near_the_rate() -> None:
    workload = Workload(rate_per_s=50.0, start_s=0.0, stop_s=100.0, bursts=(Burst(10.0, 7),))
    times = workload.arrival_times(120.0, random.Random(4))
    assert times == workload.arrival_times(120.0, random.Random(4))
    assert times == sorted(times) and times.count(10.0) >= 7
    assert 5000 - 4 * 71 < len(times) - 7 < 5000 + 4 * 71  # 4 standard deviations


def test_specs_follow_the_mixes() -> None:
    workload = Workload(models={"a": 3.0, "b": 1.0}, priorities={"high": 1.0}, bad_fraction=0.5)
    rng = random.Random(1)
    drawn = [workload.make_spec(n, rng) for n in range(2000)]
    share_a = sum(1 for spec, _ in drawn if spec.model_digest == "a") / len(drawn)
    assert 0.70 < share_a < 0.80
    assert {spec.priority for spec, _ in drawn} == {Priority.HIGH}
    assert 0.45 < sum(bad for _, bad in drawn) / len(drawn) < 0.55
    assert len({spec.input_digest for spec, _ in drawn}) == len(drawn)


def test_service_times_have_the_profile_mean() -> None:
    old = BUILTIN_CLASSES["old_gpu"]
    rng = random.Random(2)
    draws = [old.service_time("resnet50", rng) for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(old.mean_for("resnet50"), rel=0.03)
    assert min(draws) > 0


def test_profiles_override_and_layout_checks() -> None:
    classes = device_classes({"cpu": {"mean_s": {"mlp": 0.5}, "slots": 4}}, "[tasks]")
    assert classes["cpu"].mean_for("mlp") == 0.5 and classes["cpu"].slots == 4
    assert classes["cpu"].mean_for("resnet50") == BUILTIN_CLASSES["cpu"].mean_for("resnet50")
    layout = lab_layout({"old_gpu": 1, "cpu": 2}, 3, classes, "[tasks]")
    assert [d.name for d in layout] == ["old_gpu", "cpu", "cpu"]
    with pytest.raises(ConfigError, match="names 3 nodes but the scenario has 4"):
        lab_layout({"old_gpu": 1, "cpu": 2}, 4, classes, "[tasks]")
    with pytest.raises(ConfigError, match="unknown device class"):
        lab_layout({"tpu": 4}, 4, classes, "[tasks]")


def test_settings_reject_unknown_keys_and_strategies() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        TaskSimSettings.from_mapping({"stratgy": "adaptive"}, 3)
    with pytest.raises(ConfigError, match="fastest"):
        TaskSimSettings.from_mapping({"strategy": "fastest"}, 3)
    with pytest.raises(ConfigError, match="unknown key"):
        TaskSimSettings.from_mapping({"workload": {"rate": 3}}, 3)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([float(v) for v in range(1, 101)], 0.99) == 99.0


def record(time: float, n: int, priority: Priority, ready: float, worker: str) -> AssignmentRecord:
    return AssignmentRecord(time, 1, TaskId("o", n), priority, DeviceRequirements(), worker, ready)


def checker(log: list[AssignmentRecord]) -> TaskMetrics:
    layout = (BUILTIN_CLASSES["new_gpu"],) * 2
    metrics = TaskMetrics(SimpleNamespace(settings=SimpleNamespace(layout=layout)))  # type: ignore[arg-type]
    metrics.logs = [(0, log)]
    metrics._check_priority()
    return metrics


def test_priority_checker_flags_an_inversion_and_accepts_order() -> None:
    inverted = [
        record(1.0, 1, Priority.LOW, 0.5, "n-0000"),
        record(2.0, 2, Priority.HIGH, 0.2, "n-0001"),  # was waiting when LOW got n-0000
    ]
    assert "task_priority" in checker(inverted).violations
    ordered = [
        record(1.0, 2, Priority.HIGH, 0.2, "n-0001"),
        record(1.0, 1, Priority.LOW, 0.5, "n-0000"),
        record(2.0, 3, Priority.HIGH, 1.5, "n-0000"),  # arrived after the LOW assignment
    ]
    assert "task_priority" not in checker(ordered).violations
