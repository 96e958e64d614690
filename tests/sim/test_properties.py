"""Property tests: generated fault schedules (partitions, loss, delay, duplication,
crashes, restarts, slow nodes) for 3-30 real ``Node`` cores, checked against design.md
section 4 items 3-7.

A failing example prints its seed and the shrunk schedule as a complete scenario file:
save the text as ``repro.toml`` and ``meshgpu simulate repro.toml`` replays it exactly.

What is enforced depends on the schedule, as the design states the invariants:
convergence, no regression and one leader per stable component always; detection
(item 6) only where the network is not degraded beyond 5 % loss and no node is slow;
accuracy (item 7) only where no link is lossy or slowed and no node is slow, since a
slow or cut-off node being declared dead is the protocol working.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgpu.sim.faults import (
    Crash,
    Fault,
    NetworkChange,
    NodeSelector,
    Partition,
    Restart,
    Slow,
)
from meshgpu.sim.scenario import INVARIANT_NAMES, InvariantSettings, Scenario
from tests.sim.property_harness import draw_time, property_settings, run_checked

FAULT_WINDOW = (2.0, 10.0)
SETTLE_S = 8.0
EXAMPLES = int(os.environ.get("MESHGPU_PROPERTY_EXAMPLES", "12"))
"""12 examples keep the suite's share to about half a minute; set the variable to search
harder (a few hundred examples is a good overnight run)."""
pytestmark = pytest.mark.slow


@st.composite
def schedules(draw: st.DrawFn) -> Scenario:
    """A scenario with 3-30 nodes (mostly small: big ones are slow to run and to shrink)
    and up to four faults that all end by 12 s."""
    nodes = draw(st.one_of(st.integers(3, 8), st.integers(3, 30)))
    seed = draw(st.integers(0, 2**31 - 1))
    faults: list[Fault] = []
    degraded = slow_nodes = lossy = False
    for _ in range(draw(st.integers(0, 4))):
        at = draw_time(draw, *FAULT_WINDOW)
        until = round(at + draw_time(draw, 0.3, 2.0 + FAULT_WINDOW[1] - at), 2)
        until = min(until, FAULT_WINDOW[1] + 2.0)
        kind = draw(st.sampled_from(["crash", "crash", "partition", "network", "slow"]))
        if kind == "crash":
            target = NodeSelector((draw(st.integers(0, nodes - 1)),))
            if draw(st.booleans()):
                keep = draw(st.sampled_from([True, True, True, False]))
                faults.append(Crash(at_s=at, nodes=target, until_s=until, keep_incarnation=keep))
            else:
                faults.append(Crash(at_s=at, nodes=target))
                if draw(st.booleans()):
                    faults.append(Restart(at_s=until, nodes=target))
        elif kind == "partition":
            cut = draw(st.integers(1, nodes - 1))
            order = draw(st.permutations(range(nodes)))
            groups = (
                NodeSelector(tuple(sorted(order[:cut]))),
                NodeSelector(tuple(sorted(order[cut:]))),
            )
            faults.append(Partition(at_s=at, groups=groups, until_s=until))
        elif kind == "network":
            loss = draw(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.2]))
            changes: dict[str, float] = {"loss": loss}
            if draw(st.booleans()):
                changes["latency_s"] = draw(st.sampled_from([0.001, 0.01, 0.05]))
            if draw(st.booleans()):
                changes["duplicate"] = 0.05
                changes["reorder"] = 0.1
            faults.append(
                NetworkChange(at_s=at, changes=tuple(sorted(changes.items())), until_s=until)
            )
            lossy = lossy or loss > 0 or "latency_s" in changes
            degraded = degraded or loss > 0.05 or changes.get("latency_s", 0) >= 0.05
        else:
            target = NodeSelector((draw(st.integers(0, nodes - 1)),))
            delay = draw(st.sampled_from([0.05, 0.3, 1.0]))
            faults.append(
                Slow(at_s=at, nodes=target, delay_s=delay, delay_jitter_s=delay, until_s=until)
            )
            slow_nodes = True
    enabled = [name for name in INVARIANT_NAMES]
    if degraded or slow_nodes:
        enabled.remove("detection")
    if lossy or slow_nodes:
        enabled.remove("accuracy")
    return Scenario(
        name="generated",
        nodes=nodes,
        duration_s=FAULT_WINDOW[1] + 2.0 + SETTLE_S,
        seed=seed,
        faults=tuple(sorted(faults, key=lambda f: f.at_s)),
        invariants=InvariantSettings(enabled=tuple(enabled)),
    )


@property_settings(EXAMPLES)
@given(scenario=schedules())
def test_invariants_hold_under_generated_fault_schedules(scenario: Scenario) -> None:
    run_checked(scenario)
