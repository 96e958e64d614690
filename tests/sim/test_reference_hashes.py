"""The reference trace hashes (bench/trace_hashes.json, docs/benchmarks.md): the small
scenarios, run whole, give byte-identical traces. A refactor or speed change that alters
any of them changed protocol behaviour; ``python bench/trace_hashes.py`` checks them all
(the large ones too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "bench" / "trace_hashes.json").read_text())
FAST = [
    "catalog-partition-crash-10",
    "crash-50",
    "leader-crash-10",
    "partition-3-2",
    "steady-10",
    "tasks-steady-3",
]


@pytest.mark.parametrize("name", FAST)
def test_trace_hash_matches_the_reference(name: str) -> None:
    scenario = load_scenario(ROOT / "simulations" / f"{name}.toml")
    expected = REFERENCE[f"{name}@{scenario.duration_s:g}"]
    assert run_scenario(scenario).trace_sha256 == expected
