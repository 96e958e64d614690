"""Run one task scenario once per balancing strategy and compare them side by side.

    .venv/bin/python simulations/compare_strategies.py simulations/tasks-lab-12.toml
    .venv/bin/python simulations/compare_strategies.py simulations/tasks-lab-12.toml --json

Prints a table (p50/p99 latency, done, failed, lost, duplicates, balance spread) and, with
``--json``, one JSON object keyed by strategy. Same seed for every strategy, so the
workload and the device service times drawn are the same arrivals; only assignment differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from meshgpu.core.tasks.strategies import STRATEGIES
from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import load_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    if "tasks" not in base.extensions:
        print(f"{args.scenario} has no [tasks] table", file=sys.stderr)
        return 2
    results: dict[str, dict[str, object]] = {}
    for name in args.strategies.split(","):
        tasks = {**base.extensions["tasks"], "strategy": name}
        scenario = dataclasses.replace(base, extensions={**base.extensions, "tasks": tasks})
        report = run_scenario(scenario)
        summary = dict(report.metrics["tasks"])
        summary["invariants_ok"] = report.ok
        summary["wall_s"] = round(report.wall_s, 1)
        results[name] = summary
        print(f"{name}: done", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    columns = [
        "latency_p50_s",
        "latency_p99_s",
        "done",
        "failed",
        "lost",
        "duplicate_deliveries",
        "duplicate_executions",
        "balance_spread",
        "invariants_ok",
    ]
    print(f"{'strategy':<14}" + "".join(f"{c:>22}" for c in columns))
    for name, summary in results.items():
        print(f"{name:<14}" + "".join(f"{summary[c]!s:>22}" for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
