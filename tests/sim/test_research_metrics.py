"""The research metrics of ``meshgpu simulate --json`` and the belief lines of ``--trace``
on the real core: detection phases, message load, partitions, heals, split accuracy."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from meshgpu.sim.report import run_scenario
from meshgpu.sim.research_metrics import distribution
from meshgpu.sim.scenario import parse_scenario

CRASH = """
[scenario]
nodes = 8
duration_s = 16
seed = 3
[[fault]]
kind = "crash"
at_s = 10
nodes = [5]
"""

PARTITION = """
[scenario]
nodes = 6
duration_s = 30
seed = 2
[[fault]]
kind = "partition"
at_s = 8
groups = [["0..4"], ["4..6"]]
until_s = 20
"""

SLOW = """
[scenario]
nodes = 10
duration_s = 40
seed = 1
[timing]
lifeguard = false
[invariants]
accuracy = false
[[fault]]
kind = "slow"
at_s = 5
nodes = [8, 9]
delay_s = 0.4
delay_jitter_s = 0.4
until_s = 35
"""


def test_crash_detection_phases_are_ordered_and_dissemination_is_their_gap() -> None:
    data = run_scenario(parse_scenario(CRASH)).as_dict()
    first_suspicion = data["first_suspicion_s"]["samples"]
    first = data["first_detection_s"]["samples"]
    full = data["full_detection_s"]["samples"]
    assert len(first_suspicion) == len(first) == len(full) == 1
    assert 0 < first_suspicion[0] <= first[0] <= full[0]
    assert full[0] == pytest.approx(data["detection_s"]["max"], abs=1e-6)
    assert data["dissemination_s"]["samples"][0] == pytest.approx(full[0] - first[0], abs=1e-5)
    periods = data["first_suspicion_periods"]["mean"]
    assert periods == pytest.approx(first_suspicion[0] / 0.2, rel=1e-3)


def test_message_load_is_counted_in_the_steady_window_before_the_first_fault() -> None:
    data = run_scenario(parse_scenario(CRASH)).as_dict()
    load = data["message_load"]
    assert 0 < load["window_s"] < 10  # from the first agreement until the crash at 10 s
    assert load["messages"] > 0 and load["bytes"] > 20 * load["messages"]
    # SWIM: a ping and an ack per member per period, plus gossip: a handful, not dozens
    assert 1.0 <= load["per_member_per_period"] <= 6.0


def test_partition_sides_and_the_heal_are_measured() -> None:
    data = run_scenario(parse_scenario(PARTITION)).as_dict()
    (split,) = data["partition_detection"]
    assert [side["size"] for side in split["sides"]] == [4, 2]
    times = [side["declared_other_dead_s"] for side in split["sides"]]
    assert all(t is not None and 0 < t < 12 for t in times)
    assert data["partition_detection_max_s"] == max(times)
    (heal,) = data["convergence_after_heals"]
    assert heal["after"] == "end of partition" and heal["at_s"] == 20.0
    assert heal["convergence_s"] == pytest.approx(data["convergence_s"], abs=1e-6)


def test_false_verdicts_split_by_healthy_and_slow_targets() -> None:
    data = run_scenario(parse_scenario(SLOW)).as_dict()
    assert data["false_suspicions_slow"] > 0  # plain SWIM suspects the slow nodes
    assert data["false_deaths_healthy"] + data["false_deaths_slow"] == data["false_deaths"]
    assert data["false_suspicions_healthy"] + data["false_suspicions_slow"] <= data["suspicions"]


def test_trace_records_beliefs_outside_the_hash() -> None:
    scenario = parse_scenario(CRASH)
    trace = io.StringIO()
    traced = run_scenario(scenario, trace=trace)
    plain = run_scenario(scenario)
    assert traced.trace_sha256 == plain.trace_sha256
    lines = trace.getvalue().splitlines()
    kinds = [json.loads(line)["e"] for line in lines]
    beliefs = {"alive", "suspect", "dead", "left", "leader"}
    hashed = [line for line, kind in zip(lines, kinds, strict=True) if kind not in beliefs]
    assert hashlib.sha256(("\n".join(hashed) + "\n").encode()).hexdigest() == traced.trace_sha256
    assert len(hashed) == traced.events
    deaths = [json.loads(line) for line in lines if '"e":"dead"' in line]
    assert {d["of"] for d in deaths} == {5} and len({d["n"] for d in deaths}) == 7
    assert all(d["ns"] >= 10_000_000_000 for d in deaths)
    assert "leader" in kinds and "suspect" in kinds


def test_leader_failover_is_summarised() -> None:
    text = CRASH.replace("nodes = [5]", 'nodes = ["leader"]')
    data = run_scenario(parse_scenario(text)).as_dict()
    assert data["leader_failover"]["samples"] == data["leader_failover_s"]
    assert data["leader_failover"]["count"] == 1


def test_nodes_override_says_what_explicit_groups_do_with_the_new_nodes() -> None:
    scenario = parse_scenario(PARTITION).with_overrides(nodes=9)
    (note,) = scenario.notes
    assert "fault #1 (partition at 8s)" in note and "nodes 6..8 form one more group" in note
    fractions = PARTITION.replace('groups = [["0..4"], ["4..6"]]', "fractions = [0.6, 0.4]")
    assert parse_scenario(fractions).with_overrides(nodes=9).notes == ()


def test_distribution_uses_nearest_rank_and_keeps_samples_in_order() -> None:
    summary = distribution([3.0, 1.0, 2.0, 4.0])
    assert summary["p50"] == 2.0 and summary["p90"] == 4.0 and summary["max"] == 4.0
    assert summary["mean"] == 2.5 and summary["samples"] == [3.0, 1.0, 2.0, 4.0]
    assert distribution([])["count"] == 0
