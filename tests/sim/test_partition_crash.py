"""Found by the property test (derandomised, as CI runs it): a crash during a partition.

Four nodes; node 1 is cut off from 2 to 4 s, node 0 crashes at 3 s. Nodes 2 and 3 declare
it dead before the heal; node 1, alone and with its probe timeouts stretched by Lifeguard's
local health, still holds it live when the partition heals. The heal's push-pull carries
the other side's verdict. It used to be thrown away (a remote death of a member held
alive was not believed), so node 1 went on until its own slow probes found the crash:
views agreed 4.7 s after the heal. Now the verdict is hearsay, as in gossip: a suspicion
at its shortest timeout, and views agree within one detection of the heal.
"""

from __future__ import annotations

from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import parse_scenario

SCENARIO = """
[scenario]
nodes = 4
duration_s = 20.0
seed = 0

[bootstrap]
mode = "mdns"
seeds = 3
spread_s = 0.5

[[fault]]
kind = "partition"
at_s = 2.0
groups = [[1], [0, 2, 3]]
until_s = 4.0

[[fault]]
kind = "crash"
at_s = 3.0
nodes = [0]

[[fault]]
kind = "crash"
at_s = 3.0
nodes = [0]
"""


def test_a_death_learned_on_one_side_reaches_the_other_at_the_heal() -> None:
    report = run_scenario(parse_scenario(SCENARIO))
    assert all(text == "ok" for text in report.invariants.values()), report.invariants
    # the bound is one convergence plus one detection: node 1 must still time out a
    # suspicion of its own before it may declare the crash
    assert report.metrics["convergence_after"] == "end of partition"
    assert report.metrics["convergence_bound_s"] > 3.0
    assert report.metrics["convergence_s"] < report.metrics["convergence_bound_s"]


RECONNECT = """
[scenario]
nodes = 3
duration_s = 20.0
seed = 24187

[bootstrap]
mode = "mdns"
seeds = 3
spread_s = 0.5

[[fault]]
kind = "crash"
at_s = 2.0
nodes = [1]

[[fault]]
kind = "partition"
at_s = 3.0
groups = [[0], [1, 2]]
until_s = 11.0
"""


def test_a_heal_is_found_even_when_the_crashed_outnumber_the_far_side() -> None:
    """Found by the property test (seed 4): the two survivors each hold the other and the
    crashed node dead. One reconnect ping per round picked the crashed node half the time,
    and views agreed 1.1 s after the heal (bound 0.88 s); pinging up to
    ``reconnect_fanout`` dead members per round finds the far side in the first round."""
    report = run_scenario(parse_scenario(RECONNECT))
    assert all(text == "ok" for text in report.invariants.values()), report.invariants
    assert report.metrics["convergence_after"] == "end of partition"
    assert report.metrics["convergence_s"] <= 0.5 + 0.2  # one reconnect round, one exchange
