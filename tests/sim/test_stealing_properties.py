"""Property test of work stealing: Hypothesis generates heterogeneous labs (old and new
cards, prefetch queues), bursty workloads and fault schedules (crashes with or without
the journal, partitions, loss), runs them with stealing on, and checks the simulator's
invariants: no acknowledged task lost, exactly-once delivery, no state moving down, no run
that was on a device taken away by a steal, and in fault-free runs no task executed twice.

A failing example prints its seed and the whole (shrunk) scenario as TOML: save it as
``repro.toml`` and ``meshgpu simulate repro.toml`` replays it exactly.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgpu.sim.faults import Crash, Fault, NetworkChange, NodeSelector, Partition
from meshgpu.sim.scenario import InvariantSettings, Scenario
from tests.sim.property_harness import draw_time, property_settings, run_checked

DURATION_S = 22.0
EXAMPLES = int(os.environ.get("MESHGPU_TASK_PROPERTY_EXAMPLES", "8"))
pytestmark = pytest.mark.slow

INVARIANTS = (
    "task_no_loss",
    "task_exactly_once_delivery",
    "task_no_regression",
    "task_no_started_steal",
)


@st.composite
def stealing_runs(draw: st.DrawFn) -> Scenario:
    """4-12 nodes of old and new cards with a prefetch queue, a Poisson stream plus up to
    three bursts, and up to two faults that end by 12 s."""
    nodes = draw(st.integers(4, 12))
    old = draw(st.integers(1, nodes - 1))
    faults: list[Fault] = []
    for _ in range(draw(st.integers(0, 2))):
        at = draw_time(draw, 3.0, 10.0)
        until = round(min(at + draw_time(draw, 0.5, 4.0), 12.0), 2)
        kind = draw(st.sampled_from(["crash", "partition", "network"]))
        if kind == "crash":
            target = NodeSelector((draw(st.integers(0, nodes - 1)),))
            keep = draw(st.sampled_from([True, True, False]))
            faults.append(Crash(at_s=at, nodes=target, until_s=until, keep_incarnation=keep))
        elif kind == "partition":
            cut = draw(st.integers(1, nodes - 1))
            order = draw(st.permutations(range(nodes)))
            groups = (
                NodeSelector(tuple(sorted(order[:cut]))),
                NodeSelector(tuple(sorted(order[cut:]))),
            )
            faults.append(Partition(at_s=at, groups=groups, until_s=until))
        else:
            loss = draw(st.sampled_from([0.05, 0.2]))
            faults.append(NetworkChange(at_s=at, changes=(("loss", loss),), until_s=until))
    bursts = [
        {"at_s": draw_time(draw, 2.5, 11.0), "count": draw(st.integers(4, 4 * nodes))}
        for _ in range(draw(st.integers(0, 3)))
    ]
    tasks: dict[str, Any] = {
        "strategy": draw(st.sampled_from(["least_loaded", "round_robin", "adaptive"])),
        "lab": {"old_gpu": old, "new_gpu": nodes - old},
        "prefetch_per_slot": draw(st.sampled_from([1, 1, 2])),
        "model_fetch_s": 0.05,
        "config": {
            "work_stealing": True,
            "assignment_timeout_s": 4.0,
            "replication_timeout_s": 0.5,
        },
        "workload": {
            "rate_per_s": draw(st.sampled_from([2.0, 8.0, 16.0])),
            "start_s": 2.0,
            "stop_s": 12.0,
            "replicas": draw(st.sampled_from([1, 2, 2])),
            "models": {"resnet50": 2.0, "squeezenet": 1.0},
            "bursts": sorted(bursts, key=lambda b: b["at_s"]),
        },
    }
    return Scenario(
        name="generated-stealing",
        nodes=nodes,
        duration_s=DURATION_S,
        seed=draw(st.integers(0, 2**31 - 1)),
        faults=tuple(sorted(faults, key=lambda f: f.at_s)),
        invariants=InvariantSettings(enabled=(), determinism=False),
        extensions={"tasks": tasks},
    )


@property_settings(EXAMPLES)
@given(scenario=stealing_runs())
def test_stealing_keeps_every_task_invariant(scenario: Scenario) -> None:
    checked = list(INVARIANTS)
    if not scenario.faults:
        checked.append("task_no_duplicate_execution")
    tasks = run_checked(scenario, checked).metrics["tasks"]
    assert tasks["submitted"] > 0 and tasks["stealing"]["started_runs_stolen"] == 0
