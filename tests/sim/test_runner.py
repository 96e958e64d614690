"""The simulation engine and its checkers, driven by the simple heartbeat node of
``fake_node`` so that outcomes are predictable (timeout 1 s, beats every 0.2 s)."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pytest

from meshgpu.core.effects import MemberChanged
from meshgpu.core.events import PeerDiscovered
from meshgpu.errors import SimulationError
from meshgpu.sim import scenario as scenario_module
from meshgpu.sim.observers import Observer
from meshgpu.sim.report import SimulationReport, run_scenario
from meshgpu.sim.runner import Simulation
from meshgpu.sim.scenario import Scenario, parse_scenario

from .fake_node import HeartbeatNode, heartbeat_factory


def scenario(
    nodes: int, duration: float, faults: str = "", extra: str = "", seed: int = 1
) -> Scenario:
    text = f"[scenario]\nnodes = {nodes}\nduration_s = {duration}\nseed = {seed}\n{extra}\n{faults}"
    return parse_scenario(text, "test.toml")


def run(scn: Scenario, **kwargs: Any) -> SimulationReport:
    return run_scenario(scn, node_factory=heartbeat_factory, **kwargs)


CRASH_AND_PARTITION = """
[[fault]]
kind = "crash"
at_s = 4
nodes = [2]
until_s = 7
[[fault]]
kind = "partition"
at_s = 9
groups = [[0, 1, 2], [3, 4, 5]]
until_s = 12
"""


def test_same_seed_same_trace_and_other_seed_other_trace() -> None:
    first = run(scenario(6, 15, CRASH_AND_PARTITION, seed=5))
    second = run(scenario(6, 15, CRASH_AND_PARTITION, seed=5))
    third = run(scenario(6, 15, CRASH_AND_PARTITION, seed=6))
    assert first.trace_sha256 == second.trace_sha256
    assert first.events == second.events
    assert third.trace_sha256 != first.trace_sha256


def test_trace_file_is_json_lines_hashing_to_trace_sha256() -> None:
    buffer = io.StringIO()
    report = run(
        scenario(4, 5, CRASH_AND_PARTITION.split('[[fault]]\nkind = "partition"')[0]), trace=buffer
    )
    beliefs = {"alive", "suspect", "dead", "left", "leader"}
    raw = buffer.getvalue().splitlines()
    hashed = "".join(line + "\n" for line in raw if json.loads(line)["e"] not in beliefs)
    assert hashlib.sha256(hashed.encode()).hexdigest() == report.trace_sha256
    lines = [json.loads(line) for line in raw]
    assert len(hashed.splitlines()) == report.events
    assert {line["e"] for line in lines} & beliefs  # what nodes believed is in the file
    assert {line["e"] for line in lines} >= {"up", "inject", "tick", "recv", "fault", "down"}
    times = [line["ns"] for line in lines]
    assert times == sorted(times)


def test_equal_times_run_in_scheduling_order() -> None:
    sim = Simulation(scenario(2, 1), node_factory=heartbeat_factory)
    order: list[str] = []
    for name in ("first", "second", "third"):
        sim.call_at(0.5, lambda s, name=name: order.append(name))
    sim.run()
    assert order == ["first", "second", "third"]


def test_crash_is_detected_within_the_heartbeat_timeout_and_all_invariants_hold() -> None:
    report = run(
        scenario(6, 15, CRASH_AND_PARTITION, extra="[invariants]\ndetection_bound_s = 2.0")
    )
    assert report.ok, report.invariants
    detection = report.metrics["detection_s"]
    assert detection["count"] == 5  # every other node declared the crashed one dead
    period = HeartbeatNode.period  # last beat up to one period before the crash
    assert 1.0 - period <= detection["p50"] <= detection["max"] <= 1.0 + 2 * period
    assert report.metrics["false_deaths"] == 0
    assert report.metrics["explained_deaths"] == 2 * 9  # each side of the cut, both ways
    assert report.metrics["convergence_after"] == "end of partition"
    assert report.metrics["convergence_s"] is not None and report.metrics["convergence_s"] < 0.5


def test_a_bound_the_node_cannot_meet_is_a_detection_violation() -> None:
    report = run(
        scenario(6, 15, CRASH_AND_PARTITION, extra="[invariants]\ndetection_bound_s = 0.5")
    )
    assert not report.ok
    assert "bound 0.500s" in report.invariants["detection"]


def test_heavy_loss_makes_false_deaths_and_an_accuracy_violation() -> None:
    report = run(scenario(5, 30, extra="[network]\nloss = 0.6"))
    assert report.metrics["false_deaths"] > 0
    assert report.metrics["false_deaths_healthy"] == report.metrics["false_deaths"]
    assert "declared the live, healthy, reachable" in report.invariants["accuracy"]


def test_accuracy_can_be_disabled_but_is_still_measured() -> None:
    report = run(scenario(5, 30, extra="[network]\nloss = 0.6\n[invariants]\naccuracy = false"))
    assert "accuracy" not in report.invariants
    assert "accuracy" in report.invariants_skipped
    assert report.metrics["false_deaths"] > 0


def test_a_slow_node_accuses_healthy_ones_and_deaths_of_the_slow_node_are_apart() -> None:
    faults = '[[fault]]\nkind = "slow"\nat_s = 3\nnodes = [0]\ndelay_s = 1.5\nuntil_s = 10\n'
    report = run(scenario(4, 15, faults, extra="[invariants]\naccuracy = false"))
    metrics = report.metrics
    # node 0 hears beats 1.5 s late: with a 1 s timeout it declares all three others dead
    assert metrics["false_deaths_healthy"] >= 3
    assert metrics["convergence_s"] is not None  # and recovers once it is fast again


def test_restart_keeps_the_persisted_incarnation_or_not() -> None:
    faults = """
[[fault]]
kind = "crash"
at_s = 2
nodes = [1, 2]
[[fault]]
kind = "restart"
at_s = 4
nodes = [1]
[[fault]]
kind = "restart"
at_s = 4
nodes = [2]
keep_incarnation = false
"""
    sim = Simulation(scenario(4, 6, faults), node_factory=heartbeat_factory)
    sim.run()
    assert sim.nodes[1] is not None and sim.nodes[1].incarnation == 2
    assert sim.nodes[2] is not None and sim.nodes[2].incarnation == 1
    assert sim.lives == [0, 1, 1, 0]


def test_leave_stops_the_node_after_it_lingers() -> None:
    faults = '[[fault]]\nkind = "leave"\nat_s = 2\nnodes = [3]\nlinger_s = 0.5\n'
    sim = Simulation(scenario(4, 4, faults), node_factory=heartbeat_factory)
    stops: list[tuple[int, float, str]] = []

    class Watch(Observer):
        def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
            stops.append((index, now, reason))

    sim.observers = [Watch()]
    sim.run()
    assert stops == [(3, 2.5, "leave")]


def test_crashing_the_leader_measures_failover() -> None:
    faults = '[[fault]]\nkind = "crash"\nat_s = 3\nnodes = ["leader"]\n'
    report = run(scenario(5, 8, faults))
    assert len(report.metrics["leader_failover_s"]) == 1
    assert report.metrics["leader_failover_s"][0] <= 1.0 + 2 * HeartbeatNode.period


def test_random_targets_come_from_the_seed() -> None:
    faults = '[[fault]]\nkind = "crash"\nat_s = 1\nnodes = "all"\ncount = 3\n'

    def crashed(seed: int) -> list[int]:
        sim = Simulation(scenario(20, 2, faults, seed=seed), node_factory=heartbeat_factory)
        sim.run()
        return [i for i in range(20) if not sim.up[i]]

    assert crashed(1) == crashed(1)
    assert len(crashed(1)) == 3
    assert any(crashed(seed) != crashed(1) for seed in range(2, 6))


def test_observers_can_schedule_inject_and_see_effects() -> None:
    class Probe(Observer):
        def __init__(self) -> None:
            self.member_changes = 0
            self.ran_at: list[float] = []

        def on_start(self, sim: Simulation) -> None:
            sim.call_at(1.0, lambda s: self.ran_at.append(s.now))

        def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
            self.member_changes += type(effect) is MemberChanged

    probe = Probe()
    report = run(scenario(3, 2, extra='[bootstrap]\nmode = "seeds"\nseeds = 0'), observers=[probe])
    assert probe.ran_at == [1.0]
    assert probe.member_changes == 0  # nobody was told of anybody: no beliefs at all
    assert report.metrics["convergence_s"] is None

    class Introduce(Observer):
        def on_start(self, sim: Simulation) -> None:
            for i in range(3):
                for j in range(3):
                    if i != j:
                        sim.inject(i, PeerDiscovered(sim.addresses[j], sim.node_ids[j]), 0.5)

    report = run(
        scenario(3, 2, extra='[bootstrap]\nmode = "seeds"\nseeds = 0'), observers=[Introduce()]
    )
    assert report.metrics["convergence_s"] is not None


def test_extension_tables_build_observers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        scenario_module.EXTENSION_SECTIONS, "workload", f"{__name__}:_workload_factory"
    )
    scn = scenario(3, 1, extra="[workload]\nrate = 2")
    assert scn.extensions == {"workload": {"rate": 2}}
    report = run(scn)
    assert report.metrics["workload_rate"] == 2
    assert report.invariants["workload_ok"] == "ok"


class _Workload(Observer):
    def __init__(self, rate: int) -> None:
        self.rate = rate

    def invariants(self) -> dict[str, str]:
        return {"workload_ok": "ok"}

    def metrics(self) -> dict[str, Any]:
        return {"workload_rate": self.rate}


def _workload_factory(table: dict[str, Any], scn: Scenario) -> Observer:
    return _Workload(table["rate"])


def test_a_node_that_raises_stops_the_run_with_seed_and_time() -> None:
    class Broken(HeartbeatNode):
        def handle(self, event: Any, now: float) -> list[Any]:
            if now > 1.0:
                raise KeyError("boom")
            return super().handle(event, now)

    with pytest.raises(SimulationError, match=r"raised KeyError.*seed 4"):
        run_scenario(scenario(3, 3, seed=4), node_factory=Broken)


class SelfishLeader(HeartbeatNode):
    """Names itself leader: two leaders for one view in any stable component."""

    def leader(self) -> str | None:
        return self.node_id


class Shrinking(HeartbeatNode):
    """Its incarnation drops at 3 s: a regression the checker must see."""

    @property
    def incarnation(self) -> int:
        return 0 if self.now > 3.0 else self._incarnation


class Grudging(HeartbeatNode):
    """Never takes back a death: after a partition heals, views never agree again."""

    def _heard(
        self, node_id: str, address: Any, now: float, effects: list[Any], incarnation: int = 0
    ) -> None:
        if self.state.get(node_id) != "dead":
            super()._heard(node_id, address, now, effects, incarnation)


def test_two_leaders_for_one_view_violate_invariant_4() -> None:
    report = run_scenario(scenario(4, 5), node_factory=SelfishLeader)
    assert "view 0 has 4 leaders" in report.invariants["leader"]


def test_a_falling_incarnation_violates_invariant_3() -> None:
    report = run_scenario(scenario(3, 5), node_factory=Shrinking)
    assert "own incarnation went from 1 down to 0" in report.invariants["no_regression"]


def test_views_that_never_agree_after_a_heal_violate_invariant_5() -> None:
    faults = '[[fault]]\nkind = "partition"\nat_s = 2\nfractions = [0.5, 0.5]\nuntil_s = 5\n'
    report = run_scenario(scenario(4, 10, faults), node_factory=Grudging)
    assert "views still disagree (8 wrong beliefs)" in report.invariants["convergence"]
    assert report.invariants["accuracy"] == "ok"  # deaths across a cut are explained


def test_a_slow_node_handles_datagrams_late_and_in_order() -> None:
    received: list[tuple[float, str]] = []

    class Recording(HeartbeatNode):
        def handle(self, event: Any, now: float) -> list[Any]:
            if self.node_id == "n-0000" and type(event).__name__ == "DatagramReceived":
                received.append((now, event.payload.decode().split("|")[1]))
            return super().handle(event, now)

    faults = (
        '[[fault]]\nkind = "slow"\nat_s = 2\nnodes = [0]\n'
        "delay_s = 0.5\ndelay_jitter_s = 0.4\nuntil_s = 4\n"
    )
    run_scenario(
        scenario(3, 6, faults, extra="[invariants]\naccuracy = false"), node_factory=Recording
    )
    times = [t for t, _ in received]
    assert times == sorted(times)
    # from 2.5 s on, nothing sent after 2 s arrives sooner than 0.5 s: a gap opens at 2 s
    assert not any(2.0 + 0.01 < t < 2.5 for t in times)
    assert any(t > 4.0 for t in times)
