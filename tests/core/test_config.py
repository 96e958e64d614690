"""MeshConfig: defaults, validation, TOML mapping, derived timeouts."""

from __future__ import annotations

import math

import pytest

from meshgpu.core.config import MeshConfig
from meshgpu.errors import ConfigError


def test_defaults_are_the_documented_lan_profile() -> None:
    config = MeshConfig()
    assert config.probe_interval == 0.2
    assert config.probe_timeout == 0.1
    assert config.lifeguard is True


def test_from_mapping_overrides_and_converts_ints_to_floats() -> None:
    config = MeshConfig.from_mapping({"probe_interval": 1, "lifeguard": False, "gossip_fanout": 4})
    assert config.probe_interval == 1.0
    assert isinstance(config.probe_interval, float)
    assert config.lifeguard is False
    assert config.gossip_fanout == 4


@pytest.mark.parametrize(
    "table",
    [
        {"probe_intervall": 0.2},
        {"lifeguard": "yes"},
        {"gossip_fanout": 2.5},
        {"probe_interval": True},
        {"probe_interval": -1.0},
        {"probe_timeout": 0.5},
        {"indirect_checks": -1},
        {"reconnect_fanout": 0},
    ],
)
def test_bad_tables_are_config_errors_naming_the_key(table: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_mapping(table)
    assert next(iter(table)) in str(info.value)


def test_suspicion_bounds_follow_memberlist_formula() -> None:
    config = MeshConfig()
    assert config.suspicion_min(5) == pytest.approx(1.5 * 1.0 * 0.2)
    assert config.suspicion_min(50) == pytest.approx(1.5 * math.log10(50) * 0.2)
    assert config.suspicion_max(50) == pytest.approx(3 * config.suspicion_min(50))


def test_retransmit_limit_grows_with_log_n() -> None:
    config = MeshConfig()
    assert config.retransmit_limit(9) == 4
    assert config.retransmit_limit(50) == 8
    assert config.retransmit_limit(1000) == 16


def test_push_pull_period_stretches_above_32_nodes() -> None:
    config = MeshConfig()
    assert config.push_pull_period(32) == config.push_pull_interval
    assert config.push_pull_period(1000) > config.push_pull_period(100) > config.push_pull_interval


def test_each_lifeguard_refinement_turns_off_alone_and_lifeguard_off_turns_off_all() -> None:
    everything = MeshConfig()
    assert (everything.uses_health_probe, everything.uses_health_suspicion) == (True, True)
    assert everything.uses_buddy is True
    probe_only = MeshConfig.from_mapping({"lifeguard_suspicion": False, "lifeguard_buddy": False})
    assert probe_only.uses_health_probe is True
    assert (probe_only.uses_health_suspicion, probe_only.uses_buddy) == (False, False)
    plain = MeshConfig.from_mapping({"lifeguard": False})
    assert not (plain.uses_health_probe or plain.uses_health_suspicion or plain.uses_buddy)


def test_derived_lifeguard_flags_are_not_settable_keys() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        MeshConfig.from_mapping({"uses_buddy": False})


def test_the_wan_profile_starts_from_memberlists_lan_to_wan_ratios_and_keys_override_it() -> None:
    lan, wan = MeshConfig(), MeshConfig.from_mapping({"profile": "wan"})
    assert wan == MeshConfig.for_profile("wan") and MeshConfig.for_profile("lan") == lan
    assert wan.probe_interval == 5 * lan.probe_interval
    assert wan.suspicion_multiplier == 1.5 * lan.suspicion_multiplier
    assert wan.gossip_fanout == lan.gossip_fanout + 1
    assert wan.push_pull_interval == 2 * lan.push_pull_interval
    # The indirect window must hold a relay's nack across a 300 ms round trip.
    assert wan.probe_timeout * (1 + 0.7) + 0.3 < wan.probe_interval
    tuned = MeshConfig.from_mapping({"profile": "wan", "probe_interval": 2.0})
    assert tuned.probe_interval == 2.0 and tuned.probe_timeout == wan.probe_timeout
    assert MeshConfig.from_mapping({"profile": "lan"}) == lan


@pytest.mark.parametrize(
    ("table", "message"),
    [({"profile": "moon"}, "unknown profile 'moon'; the profiles are lan, wan"),
     ({"profile": 3}, "profile must be a string")],
)  # fmt: skip
def test_a_bad_profile_is_refused_naming_the_profiles(
    table: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        MeshConfig.from_mapping(table)
