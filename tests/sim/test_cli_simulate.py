"""``meshgpu simulate`` end to end on the real core: the JSON fields, the trace file,
exit codes, and determinism across processes (design.md section 4, item 10)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshgpu.cli import main

SIMULATIONS = Path(__file__).parents[2] / "simulations"
REQUIRED = {
    "seed",
    "nodes",
    "virtual_s",
    "wall_s",
    "events",
    "trace_sha256",
    "invariants",
    "detection_s",
    "suspicions",
    "false_deaths",
    "convergence_s",
    "leader_changes",
}


def simulate(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["simulate", *arguments])
    return result.exit_code, result.output


def simulate_in_subprocess(*arguments: str, hash_seed: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    command = [sys.executable, "-c", "from meshgpu.cli import main; main()", "simulate", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_json_has_every_documented_field_and_trace_matches_hash(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    code, output = simulate(
        str(SIMULATIONS / "crash-50.toml"), "--nodes", "8", "--duration", "33", "--json",
        "--trace", str(trace),
    )  # fmt: skip
    data = json.loads(output)
    assert code == 0, data["invariants"]
    assert set(data) >= REQUIRED
    assert data["nodes"] == 8 and data["virtual_s"] == 33.0
    assert set(data["detection_s"]) >= {"p50", "max"}
    # belief lines (alive, suspect, dead, left, leader) are in the file, outside the hash
    beliefs = ("alive", "suspect", "dead", "left", "leader")
    hashed = [line for line in trace.open() if json.loads(line)["e"] not in beliefs]
    assert hashlib.sha256("".join(hashed).encode()).hexdigest() == data["trace_sha256"]
    assert len(hashed) == data["events"]


@pytest.mark.slow
def test_same_seed_same_trace_in_two_processes_other_seed_differs() -> None:
    scenario = str(SIMULATIONS / "partition-3-2.toml")
    first = simulate_in_subprocess(scenario, "--json", hash_seed="1")
    second = simulate_in_subprocess(scenario, "--json", hash_seed="2")
    other = simulate_in_subprocess(scenario, "--json", "--seed", "2", hash_seed="1")
    assert first["trace_sha256"] == second["trace_sha256"]
    assert first["events"] == second["events"]
    assert other["trace_sha256"] != first["trace_sha256"]


def test_a_violated_invariant_exits_non_zero(tmp_path: Path) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text(
        "[scenario]\nnodes = 5\nduration_s = 6\n[invariants]\ndetection_bound_s = 0.01\n"
        '[[fault]]\nkind = "crash"\nat_s = 3\nnodes = [1]\n'
    )
    code, output = simulate(str(strict), "--json")
    assert code == 1
    assert "bound 0.010s" in json.loads(output)["invariants"]["detection"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scenario]\nnodes = 5\nduration_s = 6\nnodez = 3\n", "unknown key 'nodez'"),
        (
            "[scenario]\nnodes = 5\nduration_s = 6\n[timing]\nprobe_interval = -1\n",
            "probe_interval",
        ),
    ],
)
def test_a_bad_scenario_exits_2_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    code, output = simulate(str(bad))
    assert code == 2
    assert message in output


def test_a_trace_file_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path) -> None:
    """It was a bare ``[Errno 2] No such file or directory: '...'``."""
    trace = tmp_path / "missing" / "trace.jsonl"
    code, output = simulate(str(SIMULATIONS / "steady-10.toml"), "--trace", str(trace))
    assert code == 2
    assert output.strip().splitlines()[-1] == (
        f"meshgpu simulate: cannot write the trace to {trace}: No such file or directory "
        f"(no directory {trace.parent})"
    )
    assert "Errno" not in output


def test_human_summary_names_the_invariants() -> None:
    code, output = simulate(str(SIMULATIONS / "partition-3-2.toml"), "--duration", "25")
    assert code == 0
    for word in ("trace_sha256", "false deaths", "convergence", "no_regression", "leader"):
        assert word in output


def test_a_system_error_of_the_replay_is_not_reported_as_the_trace_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replay's failed fork, with no ``--trace``, printed ``cannot write None: ...``."""

    def no_fork(*_: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr("meshgpu.sim.report.check_determinism", no_fork)
    code, output = simulate(str(SIMULATIONS / "steady-10.toml"), "--check-determinism")
    assert code == 2
    last = output.strip().splitlines()[-1]
    assert last == "meshgpu simulate: system error: Resource temporarily unavailable"
