"""Whole nodes on the small test network: the protocol's behaviour end to end.

Times asserted here are *virtual* seconds (protocol properties), never wall-clock.
"""

from __future__ import annotations

import pytest

from meshgpu.core.config import MeshConfig
from meshgpu.core.events import LeaveRequested, LoadChanged, PeerDiscovered
from meshgpu.core.load import LoadVector
from tests.core.harness import MeshHarness


def detection_times(harness: MeshHarness, victim: str, since: float) -> dict[str, float]:
    first: dict[str, float] = {}
    for when, observer, effect in harness.member_changes("dead"):
        if effect.node_id == victim and when >= since:
            first.setdefault(observer, when - since)
    return first


def test_nodes_bootstrapped_from_one_seed_converge() -> None:
    harness = MeshHarness(20, seed=2)
    harness.run_until(3.0)
    assert harness.views_agree()
    leaders = {harness.nodes[n].leader() for n in harness.live()}
    assert len(leaders) == 1


@pytest.mark.parametrize(("size", "seed"), [(10, 1), (10, 2), (30, 3)])
def test_a_crash_is_declared_by_every_live_node_within_two_virtual_seconds(
    size: int, seed: int
) -> None:
    harness = MeshHarness(size, seed=seed)
    harness.run_until(5.0)
    victim = "n003"
    harness.crash(victim)
    harness.run_until(8.0)
    times = detection_times(harness, victim, 5.0)
    assert sorted(times) == [n for n in harness.live()]
    assert max(times.values()) < 2.0, times
    assert harness.views_agree()


def test_a_new_leader_is_agreed_after_the_leader_crashes() -> None:
    harness = MeshHarness(15, seed=4)
    harness.run_until(5.0)
    leader = harness.nodes["n000"].leader()
    assert leader is not None
    harness.crash(leader)
    harness.run_until(7.0)
    new_leaders = {harness.nodes[n].leader() for n in harness.live()}
    assert len(new_leaders) == 1 and leader not in new_leaders
    views = {harness.nodes[n].view for n in harness.live()}
    assert len(views) == 1


def test_a_healed_partition_reconverges() -> None:
    harness = MeshHarness(20, seed=5)
    harness.run_until(4.0)
    for index in range(8):
        harness.groups[f"n{index:03d}"] = 1
    harness.run_until(12.0)
    assert len(harness.nodes["n000"].live_members()) == 8
    assert len(harness.nodes["n019"].live_members()) == 12
    harness.groups.clear()
    harness.run_until(15.0)
    assert harness.views_agree()
    falsely_dead = [
        (when, observer, effect.node_id)
        for when, observer, effect in harness.member_changes("dead")
        if when > 12.0
    ]
    assert falsely_dead == []


@pytest.mark.slow
def test_no_false_deaths_at_five_percent_loss() -> None:
    harness = MeshHarness(12, seed=6, loss=0.05)
    harness.run_until(60.0)
    assert harness.member_changes("dead") == []
    assert harness.views_agree()


def _false_deaths_with_slow_node(lifeguard: bool) -> int:
    harness = MeshHarness(12, config=MeshConfig(lifeguard=lifeguard), seed=7)
    harness.run_until(3.0)
    harness.slow["n005"] = 0.8
    harness.run_until(40.0)
    return sum(
        1 for _, observer, effect in harness.member_changes("dead") if effect.node_id != "n005"
    )


@pytest.mark.slow
def test_lifeguard_stops_a_slow_node_from_killing_healthy_ones() -> None:
    with_lifeguard = _false_deaths_with_slow_node(True)
    without = _false_deaths_with_slow_node(False)
    assert without >= 10 * max(1, with_lifeguard), (with_lifeguard, without)


def test_leave_is_announced_and_final() -> None:
    harness = MeshHarness(6, seed=8)
    harness.run_until(3.0)
    harness.deliver_event("n002", LeaveRequested())
    harness.run_until(4.0)
    for node_id in harness.live():
        if node_id != "n002":
            assert harness.nodes[node_id].members()["n002"].state.value == "left"
            assert "n002" not in harness.nodes[node_id].live_members()


def test_load_changes_reach_every_member() -> None:
    harness = MeshHarness(8, seed=9)
    harness.run_until(3.0)
    harness.deliver_event("n004", LoadChanged(LoadVector(utilisation=0.5, memory_used=123)))
    harness.run_until(4.0)
    for node_id in harness.live():
        load = harness.nodes[node_id].loads()["n004"]
        assert (load.version, load.utilisation, load.memory_used) == (1, 0.5, 123)


def test_a_restarted_node_with_a_reset_incarnation_comes_back() -> None:
    harness = MeshHarness(8, seed=10)
    harness.run_until(3.0)
    harness.crash("n006")
    harness.run_until(6.0)
    assert "n006" not in harness.nodes["n000"].live_members()
    harness.add_node("n006", incarnation=0)
    first = harness.nodes["n000"]
    harness.deliver_event(
        "n006",
        PeerDiscovered(first.address, first.node_id),
    )
    harness.run_until(9.0)
    assert harness.views_agree()
    assert harness.nodes["n006"].incarnation > 0


def test_same_seed_same_trace() -> None:
    def trace(seed: int) -> list[tuple[float, str, object]]:
        harness = MeshHarness(10, seed=seed, loss=0.02)
        harness.run_until(5.0)
        harness.crash("n001")
        harness.run_until(8.0)
        return harness.log

    assert trace(3) == trace(3)
