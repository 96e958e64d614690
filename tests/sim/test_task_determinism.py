"""Invariant 10 with the task queue on: the same seed gives the same trace, byte for byte,
in separate processes with different hash seeds (set iteration order differs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIO = """
[scenario]
name = "tasks-determinism"
nodes = 5
duration_s = 12
seed = 21

[tasks]
strategy = "adaptive"
lab = { old_gpu = 2, new_gpu = 2, cpu = 1 }

[tasks.workload]
rate_per_s = 8
start_s = 2
stop_s = 8
priorities = { normal = 3, high = 1 }

[[fault]]
kind = "crash"
at_s = 5
nodes = [1]
until_s = 7
"""


def run(path: Path, hash_seed: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    code = "from meshgpu.cli import main; main()"
    completed = subprocess.run(
        [sys.executable, "-c", code, "simulate", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert completed.stdout, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout)
    return result


def test_same_seed_same_trace_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(SCENARIO)
    first, second = run(path, "1"), run(path, "2")
    assert first["trace_sha256"] == second["trace_sha256"]
    assert first["tasks"] == second["tasks"]
    tasks = first["tasks"]
    assert isinstance(tasks, dict) and tasks["submitted"] > 0 and tasks["lost"] == 0
