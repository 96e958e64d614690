"""Scenario files: every table parses, unknown keys are errors naming the key, and a
scenario written back as TOML parses to the same scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgpu.errors import ConfigError
from meshgpu.sim.faults import Crash, NetworkChange, NodeSelector, Partition, Slow
from meshgpu.sim.scenario import load_scenario, parse_scenario, scenario_to_toml

FULL = """
[scenario]
name = "everything"
description = "uses every table"
nodes = 8
duration_s = 30
seed = 7
sample_interval_s = 0.2

[timing]
probe_interval = 0.25
probe_timeout = 0.1
lifeguard = false

[network]
latency_s = 0.001
jitter = "uniform"
jitter_s = 0.002
loss = 0.01

[[network.link]]
from = [0]
to = ["1..3"]
loss = 0.5

[bootstrap]
mode = "seeds"
seeds = 2
spread_s = 1.0

[invariants]
accuracy = false
detection_bound_s = 3.0
convergence_c = 5
max_false_deaths = 2
quiet_periods = 4
determinism = true

[[fault]]
kind = "crash"
at_s = 5
nodes = "all"
count = 1
until_s = 9
keep_incarnation = false

[[fault]]
kind = "partition"
at_s = 10
fractions = [0.5, 0.5]
until_s = 15

[[fault]]
kind = "partition"
at_s = 16
groups = [[0, 1], ["2..5"]]

[[fault]]
kind = "heal"
at_s = 18

[[fault]]
kind = "network"
at_s = 19
nodes = [3]
loss = 0.2
latency_s = 0.01
until_s = 21

[[fault]]
kind = "slow"
at_s = 20
nodes = ["leader"]
delay_s = 0.4
delay_jitter_s = 0.1
tick_delay_s = 0.05
until_s = 25

[[fault]]
kind = "leave"
at_s = 26
nodes = [7]
linger_s = 0.5

[[fault]]
kind = "restart"
at_s = 27
nodes = "all"
"""


HEAD = "[scenario]\nnodes = 3\nduration_s = 1\n"


def test_full_scenario_parses_every_table() -> None:
    scenario = parse_scenario(FULL, "full.toml")
    assert (scenario.name, scenario.nodes, scenario.duration_s, scenario.seed) == (
        "everything",
        8,
        30.0,
        7,
    )
    assert scenario.timing == {"probe_interval": 0.25, "probe_timeout": 0.1, "lifeguard": False}
    assert scenario.network.jitter == "uniform" and scenario.network.loss == 0.01
    assert scenario.bootstrap.mode == "seeds" and scenario.bootstrap.seeds == 2
    assert "accuracy" not in scenario.invariants.enabled
    assert scenario.invariants.detection_bound_s == 3.0
    assert scenario.invariants.determinism
    kinds = [fault.kind for fault in scenario.faults]
    assert kinds == [
        "network",
        "crash",
        "partition",
        "partition",
        "heal",
        "network",
        "slow",
        "leave",
        "restart",
    ]
    link = scenario.faults[0]
    assert (
        isinstance(link, NetworkChange) and link.sources == NodeSelector((0,)) and link.at_s == 0.0
    )
    crash = scenario.faults[1]
    assert isinstance(crash, Crash) and crash.nodes.count == 1 and not crash.keep_incarnation
    partition = scenario.faults[2]
    assert isinstance(partition, Partition) and partition.resolve(8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    slow = scenario.faults[6]
    assert isinstance(slow, Slow) and slow.nodes.uses_leader() and slow.tick_delay_s == 0.05


def test_scenario_round_trips_through_toml() -> None:
    scenario = parse_scenario(FULL, "full.toml")
    again = parse_scenario(scenario_to_toml(scenario), "full.toml")
    assert again == scenario


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[scenario]\nnodes = 3\nduration_s = 1\n[scenaro]\n", "'scenaro'"),
        ("[scenario]\nnodes = 3\nduration_s = 1\nseeed = 2\n", "'seeed'"),
        ("[scenario]\nnodes = 3\nduration_s = 1\n[network]\nlos = 0.1\n", "'los'"),
        (
            "[scenario]\nnodes = 3\nduration_s = 1\n[timing]\nprobe_intervall = 1.0\n",
            "probe_intervall",
        ),
        ("[scenario]\nnodes = 3\nduration_s = 1\n[bootstrap]\nseed = 1\n", "'seed'"),
        ("[scenario]\nnodes = 3\nduration_s = 1\n[invariants]\nleaders = true\n", "'leaders'"),
        (
            HEAD + '[[fault]]\nkind = "crash"\nat_s = 1\nnode = 1\n',
            "'node'",
        ),
        (
            HEAD + '[[fault]]\nkind = "heal"\nat_s = 1\nuntil_s = 2\n',
            "'until_s'",
        ),
    ],
)
def test_unknown_keys_are_config_errors_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_scenario(text, "bad.toml")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ('kind = "crash"\nat_s = 1\nnodes = [9]', "names node 9"),
        ('kind = "crash"\nat_s = 1\nnodes = ["2..x"]', "not an index"),
        ('kind = "crash"\nat_s = 3\nnodes = [1]\nuntil_s = 2', "must be after at_s"),
        ('kind = "explode"\nat_s = 1', "kind must be one of"),
        ('kind = "partition"\nat_s = 1', "exactly one of 'groups' or 'fractions'"),
        ('kind = "network"\nat_s = 1', "changes no link parameter"),
        ('kind = "crash"\nat_s = "soon"\nnodes = [1]', "must be a number"),
        # ran as a crash of all three, reported as "every crash hit an unsettled mesh"
        ('kind = "crash"\nat_s = 1\nnodes = "all"\ncount = 5', "count is 5, but the selector"),
        ('kind = "slow"\nat_s = 1\nnodes = ["0..2"]\ncount = 3\ndelay_s = 1', "names 2 of"),
    ],
)
def test_bad_faults_say_what_is_wrong(fault: str, message: str) -> None:
    text = f"[scenario]\nnodes = 3\nduration_s = 10\n[[fault]]\n{fault}\n"
    with pytest.raises(ConfigError, match=message):
        parse_scenario(text, "bad.toml")


def test_overrides_are_revalidated() -> None:
    text = (
        '[scenario]\nnodes = 5\nduration_s = 10\n[[fault]]\nkind = "crash"\nat_s = 1\nnodes = [4]\n'
    )
    scenario = parse_scenario(text)
    assert scenario.with_overrides(seed=3, duration_s=2.0).seed == 3
    with pytest.raises(ConfigError, match="names node 4"):
        scenario.with_overrides(nodes=3)


def test_missing_file_and_invalid_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read scenario"):
        load_scenario(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[scenario\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(broken)


def test_shipped_scenarios_all_parse() -> None:
    shipped = sorted(Path(__file__).parents[2].joinpath("simulations").glob("*.toml"))
    for path in shipped:
        load_scenario(path)
