"""Choosing the first peer (given, MESHGPU_PEER, local daemon) and the failover order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshgpu.client.peers import (
    LOCAL_DEFAULT,
    Candidate,
    failover_order,
    initial_candidates,
    local_daemon,
    parse_address,
)
from meshgpu.errors import ConfigError


def test_parse_address_forms() -> None:
    assert parse_address("10.0.0.5:7000") == ("10.0.0.5", 7000)
    assert parse_address("lab-3") == ("lab-3", 7946)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    for bad in ("host:port", ":7000", "h:70000"):
        with pytest.raises(ConfigError):
            parse_address(bad)


def test_a_given_peer_is_the_only_candidate(tmp_path: Path) -> None:
    environ = {"MESHGPU_PEER": "10.0.0.9:1", "MESHGPU_DATA_DIR": str(tmp_path)}
    assert [c.address for c in initial_candidates("h:5", environ)] == [("h", 5)]
    assert [c.address for c in initial_candidates(("h", 5), environ)] == [("h", 5)]
    both = initial_candidates(["a:1", ("b", 2)], environ)
    assert [c.address for c in both] == [("a", 1), ("b", 2)]


def test_environment_peers_come_before_the_local_daemon(tmp_path: Path) -> None:
    environ = {"MESHGPU_PEER": "a:1, b:2", "MESHGPU_DATA_DIR": str(tmp_path)}
    found = initial_candidates(None, environ)
    assert [c.address for c in found] == [("a", 1), ("b", 2)]
    assert all(c.source == "MESHGPU_PEER" for c in found)


def test_local_daemon_file_then_default_port(tmp_path: Path) -> None:
    (tmp_path / "daemon.json").write_text(
        json.dumps({"node_id": "n", "host": "0.0.0.0", "port": 7001, "pid": 1, "mesh": "m"})
    )
    found = initial_candidates(None, {"MESHGPU_DATA_DIR": str(tmp_path)})
    assert [c.address for c in found] == [("127.0.0.1", 7001), LOCAL_DEFAULT]


def test_unreadable_daemon_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "daemon.json").write_text("{not json")
    assert local_daemon(tmp_path) is None
    found = initial_candidates(None, {"MESHGPU_DATA_DIR": str(tmp_path)})
    assert [c.address for c in found] == [LOCAL_DEFAULT]


def member(node_id: str, port: int, state: str) -> dict[str, object]:
    return {"node_id": node_id, "address": ["127.0.0.1", port], "state": state}


def test_failover_prefers_alive_then_suspect_then_seeds_then_dead() -> None:
    members = [
        member("d", 4, "dead"),
        member("s", 3, "suspect"),
        member("b", 2, "alive"),
        member("a", 1, "alive"),
    ]
    seed = Candidate(("10.0.0.1", 9), "given")
    order = failover_order(members, [seed])
    assert [c.address[1] for c in order] == [1, 2, 3, 9, 4]


def test_failover_puts_the_failed_peer_last_and_lists_each_address_once() -> None:
    members = [member("a", 1, "alive"), member("b", 2, "alive")]
    seed = Candidate(("127.0.0.1", 1), "given")
    order = failover_order(members, [seed], exclude=[("127.0.0.1", 1)])
    assert [c.address[1] for c in order] == [2, 1]
