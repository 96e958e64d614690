"""The model catalog in the simulator: concurrent changes at many nodes, across a
partition that heals and a node that crashes and comes back, end in one last-writer-wins
catalog on every live node (meshgpu/sim/catalog_driver.py, invariant
``catalog_convergence``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgpu.core.catalog import Catalog
from meshgpu.errors import ConfigError
from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "simulations" / "catalog-partition-crash-10.toml"


def test_live_nodes_converge_to_one_lww_catalog() -> None:
    report = run_scenario(load_scenario(SCENARIO))
    assert report.invariants["catalog_convergence"] == "ok"
    metrics = report.metrics
    assert metrics["catalog_changes"] >= 80  # about 4 a second for 33 s
    assert metrics["catalog_disagreed_samples"] > 0  # the partition did split the catalog
    assert metrics["catalog_converged_at_s"] is not None
    assert metrics["catalog_names"] >= 1


def test_the_check_fails_when_anti_entropy_does_not_carry_the_catalog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the catalog in push-pull, gossip alone (its retransmits spent during the
    partition) leaves the two sides apart: the invariant must say so."""
    monkeypatch.setattr(Catalog, "anti_entropy_updates", lambda self: [])
    report = run_scenario(load_scenario(SCENARIO))
    assert report.invariants["catalog_convergence"].startswith("live nodes")


def test_same_seed_same_trace() -> None:
    scenario = load_scenario(SCENARIO)
    assert run_scenario(scenario).trace_sha256 == run_scenario(scenario).trace_sha256


def test_bad_catalog_table_is_a_clear_error() -> None:
    text = SCENARIO.read_text().replace("names = 6", "names = 6\nrate = 3")
    with pytest.raises(ConfigError, match=r"\[catalog\]: unknown key\(s\) \['rate'\]"):
        run_scenario(parse_scenario(text))
    text = SCENARIO.read_text().replace("stop_s = 35", "stop_s = 90")
    with pytest.raises(ConfigError, match="stop_s"):
        run_scenario(parse_scenario(text))
