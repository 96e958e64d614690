"""A short fault campaign (bench/chaos.py, a fixed seed) on real daemons in namespaces:
partitions, pauses, kills, a wiped and a full data directory mixed under a steady
workload lose nothing, deliver nothing twice or wrong, and leave nothing unresolved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.lab import NamespacesUnavailable, check_available

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CHAOS = Path(__file__).parents[2] / "bench" / "chaos.py"


def test_a_short_seeded_campaign_loses_and_duplicates_nothing() -> None:
    try:
        check_available()
    except NamespacesUnavailable as reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    argv = ["--minutes", "1.5", "--seed", "3", "--nodes", "4", "--drain-s", "90", "--json"]
    run = subprocess.run(
        [sys.executable, str(CHAOS), *argv], capture_output=True, text=True, timeout=600
    )
    assert run.stdout.strip(), run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    report = f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    assert result["seed"] == 3
    assert result["acknowledged"] > 0 and result["done"] > 0, report
    assert sum(result["faults"].values()) >= 5, report
    for name in ("lost", "unresolved", "duplicate_deliveries", "wrong_outputs"):
        assert result[name] == 0, f"{name}: {result[name]}\n{report}"
    # every result delivered has a run on record (the daemons' own log of device runs),
    # and the runs beyond one per task are each explained
    executions = result["executions"]
    assert executions["done_without_run"] == 0, report
    # every HTTP answer is right, names its own task, and that task's run is on record
    http = result["http"]
    assert http.get("done", 0) > 0 and http.get("wrong", 0) == 0, report
    assert http["task_ids_answered_twice"] == 0, report
    assert http.get("answers_without_task_id", 0) == 0, report
    assert executions["http_done_without_run"] == 0, report
    assert result["runs_started"] >= result["done"], report
    assert executions["duplicate"] == executions["retried"] + executions["same_attempt"], report
    assert run.returncode == 0, report
