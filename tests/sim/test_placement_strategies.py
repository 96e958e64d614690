"""binpack and spread in the simulator at a quarter of the mesh's capacity (shortened forms
of simulations/tasks-binpack-10.toml and tasks-spread-10.toml): binpack leaves at least
half the workers without a task, spread keeps per-worker counts within 5 %, and neither
loses or duplicates a task."""

from __future__ import annotations

import pytest

from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import parse_scenario

pytestmark = pytest.mark.slow

SCENARIO = """
[scenario]
name = "tasks-{strategy}-short"
description = ""
nodes = 10
duration_s = 30
seed = 1

[tasks]
strategy = "{strategy}"

[tasks.profiles.new_gpu]
slots = 8
mean_s = {{ resnet50 = 0.4 }}

[tasks.workload]
rate_per_s = 50
start_s = 3
stop_s = 20
models = {{ resnet50 = 1 }}
"""


def per_worker(strategy: str) -> list[int]:
    report = run_scenario(parse_scenario(SCENARIO.format(strategy=strategy)))
    tasks = report.metrics["tasks"]
    assert report.ok, report.metrics["invariants"]
    assert tasks["done"] == tasks["submitted"] > 500
    assert tasks["lost"] == tasks["duplicate_deliveries"] == 0
    return list(tasks["per_worker_tasks"].values())


def test_binpack_leaves_half_the_workers_idle() -> None:
    counts = per_worker("binpack")
    assert sum(1 for c in counts if c == 0) >= len(counts) // 2, counts


def test_spread_keeps_per_worker_counts_level() -> None:
    counts = per_worker("spread")
    mean = sum(counts) / len(counts)
    assert (max(counts) - min(counts)) / mean <= 0.05, counts
    assert min(counts) > 0
