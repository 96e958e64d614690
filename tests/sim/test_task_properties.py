"""Property tests of the task queue: Hypothesis generates workloads and fault schedules
(partitions, crashes and restarts with or without the journal, loss, delay) for 3-20
nodes and every run is checked for design.md section 4 items 1, 2, 3 (tasks) and 8.

* every run: no acknowledged task lost (unless no holder survived with its data), no
  duplicate delivery to a client, no task state moving down on any node;
* fault-free runs (no faults, no loss): no task executed twice.

A failing example prints its seed and the whole scenario (tasks table included) as TOML:
save it as ``repro.toml`` and ``meshgpu simulate repro.toml`` replays it exactly.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgpu.core.tasks.strategies import STRATEGIES
from meshgpu.sim.faults import Crash, Fault, NetworkChange, NodeSelector, Partition, Restart
from meshgpu.sim.scenario import InvariantSettings, Scenario
from tests.sim.property_harness import draw_time, property_settings, run_checked

FAULT_WINDOW = (3.0, 11.0)
ARRIVALS = (2.0, 13.0)
DURATION_S = 24.0
EXAMPLES = int(os.environ.get("MESHGPU_TASK_PROPERTY_EXAMPLES", "8"))
pytestmark = pytest.mark.slow

TASK_INVARIANTS = ("task_no_loss", "task_exactly_once_delivery", "task_no_regression")


@st.composite
def task_runs(draw: st.DrawFn) -> Scenario:
    """3-20 nodes (mostly small: runs must stay cheap), a Poisson workload with a
    priority and model mix, and up to three faults that all end by 13 s."""
    nodes = draw(st.one_of(st.integers(3, 6), st.integers(3, 20)))
    seed = draw(st.integers(0, 2**31 - 1))
    faults: list[Fault] = []
    for _ in range(draw(st.integers(0, 3))):
        at = draw_time(draw, *FAULT_WINDOW)
        until = round(min(at + draw_time(draw, 0.5, 6.0), FAULT_WINDOW[1] + 2.0), 2)
        kind = draw(st.sampled_from(["crash", "crash", "partition", "network"]))
        if kind == "crash":
            target = NodeSelector((draw(st.integers(0, nodes - 1)),))
            keep = draw(st.sampled_from([True, True, False]))
            if draw(st.booleans()):
                faults.append(Crash(at_s=at, nodes=target, until_s=until, keep_incarnation=keep))
            else:
                faults.append(Crash(at_s=at, nodes=target))
                if draw(st.booleans()):
                    faults.append(Restart(at_s=until, nodes=target, keep_incarnation=keep))
        elif kind == "partition":
            cut = draw(st.integers(1, nodes - 1))
            order = draw(st.permutations(range(nodes)))
            groups = (
                NodeSelector(tuple(sorted(order[:cut]))),
                NodeSelector(tuple(sorted(order[cut:]))),
            )
            faults.append(Partition(at_s=at, groups=groups, until_s=until))
        else:
            changes: dict[str, float] = {"loss": draw(st.sampled_from([0.01, 0.05, 0.2, 0.4]))}
            if draw(st.booleans()):
                changes["latency_s"] = draw(st.sampled_from([0.005, 0.05]))
            faults.append(
                NetworkChange(at_s=at, changes=tuple(sorted(changes.items())), until_s=until)
            )
    tasks: dict[str, Any] = {
        "strategy": draw(st.sampled_from(sorted(STRATEGIES))),
        "config": {"assignment_timeout_s": 4.0, "replication_timeout_s": 0.5},
        "workload": {
            "rate_per_s": draw(st.sampled_from([2.0, 4.0, 8.0, 16.0])),
            "start_s": ARRIVALS[0],
            "stop_s": ARRIVALS[1],
            "replicas": draw(st.sampled_from([1, 2, 2, 3])),
            "bad_fraction": draw(st.sampled_from([0.0, 0.0, 0.1])),
            "models": {"resnet50": 2.0, "squeezenet": 1.0},
            "priorities": {"normal": 3.0, "high": 1.0, "low": 1.0},
        },
    }
    return Scenario(
        name="generated-tasks",
        nodes=nodes,
        duration_s=DURATION_S,
        seed=seed,
        faults=tuple(sorted(faults, key=lambda f: f.at_s)),
        invariants=InvariantSettings(enabled=(), determinism=False),
        extensions={"tasks": tasks},
    )


@property_settings(EXAMPLES)
@given(scenario=task_runs())
def test_task_invariants_hold_under_generated_workloads_and_faults(scenario: Scenario) -> None:
    checked = list(TASK_INVARIANTS)
    if not scenario.faults:
        checked.append("task_no_duplicate_execution")
    report = run_checked(scenario, checked)
    assert report.metrics["tasks"]["submitted"] > 0
