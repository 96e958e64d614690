"""Coalescing and dynamic batching in the simulator (shortened forms of
simulations/tasks-coalescing-10.toml and tasks-batching-6.toml): bursts of single
submissions become task groups at their entry nodes, each member keeps its own outcome
(a bad input fails alone) and is delivered once, nothing is lost; with a sub-linear batch
profile the same arrivals finish sooner than without coalescing and batching."""

from __future__ import annotations

from typing import Any

import pytest

from meshgpu.errors import ConfigError
from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import parse_scenario
from meshgpu.sim.task_driver import TaskSimSettings

pytestmark = pytest.mark.slow

SCENARIO = """
[scenario]
name = "tasks-coalescing-short"
description = ""
nodes = 6
duration_s = 20
seed = 5

[tasks]
strategy = "least_loaded"
{settings}

[tasks.workload]
rate_per_s = 20
start_s = 3
stop_s = 12
bursts = [{{ at_s = 5, count = 240 }}, {{ at_s = 9, count = 240 }}]
models = {{ squeezenet = 1 }}
priorities = {{ normal = 1 }}
bad_fraction = 0.02
"""


def run(settings: str) -> dict[str, Any]:
    report = run_scenario(parse_scenario(SCENARIO.format(settings=settings)))
    assert report.ok, report.metrics["invariants"]
    tasks: dict[str, Any] = report.metrics["tasks"]
    assert tasks["lost"] == tasks["duplicate_deliveries"] == tasks["duplicate_executions"] == 0
    assert tasks["done"] + tasks["failed"] == tasks["submitted"] > 500
    return tasks


def test_bursts_coalesce_into_groups_and_batches_shorten_the_tail() -> None:
    plain = run("")
    both = run("coalesce = true\nbatching = { max_batch = 32 }")
    batching = both["batching"]
    assert batching["groups"] > 0 and batching["coalesced"] > 100
    assert batching["table_entries"] < plain["submitted"] * 0.8
    assert batching["average_batch"] > 1.5
    # Every member has its own outcome: the same bad inputs fail, alone, in both runs.
    assert both["failed"] == plain["failed"] > 0
    assert both["messages_per_task"]["datagrams"] < plain["messages_per_task"]["datagrams"]
    assert both["latency_p99_s"] < plain["latency_p99_s"]


DELAYED = """
[scenario]
name = "tasks-batching-delay-short"
description = ""
nodes = 2
duration_s = 10
seed = 5

[tasks]
strategy = "least_loaded"
prefetch_per_slot = 3
{settings}

[tasks.workload]
rate_per_s = 200
start_s = 3
stop_s = 6
models = {{ squeezenet = 1 }}
priorities = {{ normal = 1 }}
"""


def test_a_batching_delay_waits_for_more_and_makes_batches_larger() -> None:
    """Without coalescing the batches come from tasks waiting on a worker; with
    ``max_delay_ms`` the run that has a slot waits for more of its model first (the
    core's delay rule, as the daemon's worker), so batches grow, nothing is lost."""
    averages = []
    for settings in (
        "batching = { max_batch = 8 }",
        "batching = { max_batch = 8, max_delay_ms = 10 }",
    ):
        report = run_scenario(parse_scenario(DELAYED.format(settings=settings)))
        assert report.ok, report.metrics["invariants"]
        tasks = report.metrics["tasks"]
        assert tasks["lost"] == tasks["duplicate_deliveries"] == 0
        assert tasks["done"] == tasks["submitted"] > 400
        averages.append(tasks["batching"]["average_batch"])
    assert averages[1] > averages[0] * 1.2, averages


def test_malformed_batching_settings_are_refused() -> None:
    for bad in (
        {"batching": {"max_batch": 0}},
        {"batching": {"size": 8}},
        {"batching": {"max_batch": 8, "max_delay_ms": -1}},
        {"batching": {"max_batch": 8, "max_delay_ms": 20_000}},
        {"coalesce": "yes"},
    ):
        with pytest.raises(ConfigError):
            TaskSimSettings.from_mapping(bad, 3)
