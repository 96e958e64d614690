"""`meshgpu demo --json` as a user runs it: a separate process that starts its own mesh,
kills the leader a third of the way in and reports nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_json_reports_nothing_lost() -> None:
    outcome = subprocess.run(
        [sys.executable, "-m", "meshgpu", "demo", "--json", "--tasks", "45", "--batch", "2"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    report = json.loads(outcome.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 3 and report["tasks"] == 45
    assert report["lost"] == 0 and report["failed"] == 0 and report["done"] == 45
    assert report["accuracy"] > 0.9
    assert report["killed"]["role"] in ("leader", "entry node")
    assert report["failover_s"] is not None
    assert sum(report["ran"].values()) == 45
