"""Found by the property test (seed 0): two of three nodes crash at once.

The survivor's indirect probes go through the other dead node, no nack comes back, and
Lifeguard's local health stretches its timeouts, as designed. The detection bound is the
promise for a settled mesh; this crash is measured and counted as unsettled, while a single
crash in the same mesh stays enforced.
"""

from __future__ import annotations

from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import parse_scenario

SCENARIO = """
[scenario]
nodes = 3
duration_s = 20.0
seed = 0

[bootstrap]
mode = "mdns"
seeds = 3
spread_s = 0.5

[[fault]]
kind = "crash"
at_s = 2.0
nodes = [0]
{second}
"""

SECOND_CRASH = """
[[fault]]
kind = "crash"
at_s = 2.0
nodes = [1]
"""


def test_two_of_three_crashing_at_once_is_measured_not_enforced() -> None:
    report = run_scenario(parse_scenario(SCENARIO.format(second=SECOND_CRASH)))
    assert all(text == "ok" for text in report.invariants.values()), report.invariants
    assert "detection" not in report.invariants  # measured, reported as skipped
    assert "detection" in report.invariants_skipped
    assert report.metrics["detection_unsettled"] == 2


def test_a_single_crash_in_three_nodes_is_enforced() -> None:
    report = run_scenario(parse_scenario(SCENARIO.format(second="")))
    assert report.invariants["detection"] == "ok"
    assert report.metrics["detection_unsettled"] == 0
