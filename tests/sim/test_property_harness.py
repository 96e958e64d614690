"""The property-test harness (tests/sim/property_harness.py): a failing run names its seed
and prints the whole scenario, extension tables included, as a file that replays it."""

from __future__ import annotations

import pytest

from meshgpu.sim.scenario import InvariantSettings, Scenario, parse_scenario, scenario_to_toml

TASKS = {
    "strategy": "least_loaded",
    "lab": {"old_gpu": 1, "new_gpu": 2},
    "prefetch_per_slot": 1,
    "model_fetch_s": 0.05,
    "config": {"work_stealing": True, "assignment_timeout_s": 4.0},
    "workload": {
        "rate_per_s": 4.0,
        "start_s": 1.0,
        "stop_s": 2.0,
        "models": {"resnet50": 2.0, "squeezenet": 1.0},
        "bursts": [{"at_s": 1.5, "count": 6}],
    },
}
SCENARIO = Scenario(
    name="harness",
    nodes=3,
    duration_s=4.0,
    seed=17,
    invariants=InvariantSettings(enabled=(), determinism=False),
    extensions={"tasks": TASKS},
)


def test_a_scenario_with_a_tasks_table_round_trips_through_toml() -> None:
    again = parse_scenario(scenario_to_toml(SCENARIO))
    assert again.extensions == SCENARIO.extensions
    assert (again.nodes, again.seed, again.duration_s) == (3, 17, 4.0)


def test_a_failing_run_prints_its_seed_and_a_scenario_that_replays_it() -> None:
    from tests.sim.property_harness import run_checked

    with pytest.raises(AssertionError) as failure:
        run_checked(SCENARIO, ["no_such_invariant"])
    message = str(failure.value)
    assert "seed 17" in message and "not checked" in message
    reproduce = message[message.index("[scenario]") :]
    assert parse_scenario(reproduce).extensions == SCENARIO.extensions
    report = run_checked(SCENARIO, ["task_no_loss"])
    assert report.metrics["tasks"]["submitted"] > 0
