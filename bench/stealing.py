"""Work stealing in the simulator: the same scenario with stealing off and on, same seeds.

Runs ``simulations/tasks-steal-lab-12.toml`` (a heterogeneous 12-node lab: old and new
OpenCL cards, prefetch queues, bursts of ResNet-50 jobs; or ``--scenario FILE``) once
with ``work_stealing = false`` and once with ``true`` per seed, and prints per seed the
p50 and p99 latency of each, the p99 reduction, lost tasks, duplicate deliveries,
duplicate executions and the stealing counters (requested, stolen, refused, runs taken
off a device: must be 0). The issue's yardstick: p99 with stealing at least 20 % below
without on every seed, 0 lost, 0 duplicate deliveries.

Usage::

    python bench/stealing.py                  # seeds 1-5, a table
    python bench/stealing.py --seeds 1,2,3 --json

Virtual time, so the figures do not depend on the machine's load. Benchmarks are not
tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = ROOT / "simulations" / "tasks-steal-lab-12.toml"


def with_stealing(scenario: Any, on: bool, seed: int) -> Any:
    """``scenario`` with ``[tasks.config] work_stealing`` set to ``on``, at ``seed``."""
    extensions = dict(scenario.extensions)
    tasks = dict(extensions["tasks"])
    tasks["config"] = {**tasks.get("config", {}), "work_stealing": on}
    extensions["tasks"] = tasks
    return dataclasses.replace(scenario, extensions=extensions, seed=seed)


def run_pair(scenario: Any, seed: int) -> dict[str, Any]:
    from meshgpu.sim.report import run_scenario

    row: dict[str, Any] = {"seed": seed}
    for label, on in (("off", False), ("on", True)):
        report = run_scenario(with_stealing(scenario, on, seed))
        tasks = report.metrics["tasks"]
        row[label] = {
            "latency_p50_s": tasks["latency_p50_s"],
            "latency_p99_s": tasks["latency_p99_s"],
            "done": tasks["done"],
            "lost": tasks["lost"],
            "duplicate_deliveries": tasks["duplicate_deliveries"],
            "duplicate_executions": tasks["duplicate_executions"],
            "stealing": tasks.get("stealing", {}),
            "invariants_ok": all(v == "ok" for v in report.invariants.values()),
        }
    off, on_ = row["off"]["latency_p99_s"], row["on"]["latency_p99_s"]
    row["p99_reduction"] = round(1.0 - on_ / off, 4) if off and on_ is not None else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    from meshgpu.sim.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = []
    if not args.json:
        print(
            f"{'seed':>4} {'p50 off':>8} {'p50 on':>8} {'p99 off':>8} {'p99 on':>8} "
            f"{'p99 cut':>8} {'lost':>5} {'dup.del':>7} {'dup.exe':>7} {'stolen':>7} "
            f"{'refused':>7} {'on-dev':>6} {'inv':>4}",
            flush=True,
        )
    for seed in seeds:
        row = run_pair(scenario, seed)
        rows.append(row)
        if not args.json:
            off, on = row["off"], row["on"]
            steal = on["stealing"]
            cut = row["p99_reduction"]
            print(
                f"{seed:>4} {off['latency_p50_s']:>8.4f} {on['latency_p50_s']:>8.4f} "
                f"{off['latency_p99_s']:>8.4f} {on['latency_p99_s']:>8.4f} "
                f"{'-' if cut is None else f'{cut:.1%}':>8} "
                f"{off['lost'] + on['lost']:>5} "
                f"{off['duplicate_deliveries'] + on['duplicate_deliveries']:>7} "
                f"{off['duplicate_executions'] + on['duplicate_executions']:>7} "
                f"{steal.get('tasks_stolen', 0):>7} {steal.get('steals_refused', 0):>7} "
                f"{steal.get('started_runs_stolen', 0):>6} "
                f"{'ok' if off['invariants_ok'] and on['invariants_ok'] else 'FAIL':>4}",
                flush=True,
            )
    cuts = [r["p99_reduction"] for r in rows if r["p99_reduction"] is not None]
    summary = {
        "scenario": scenario.name,
        "seeds": seeds,
        "p99_reduction_min": min(cuts) if cuts else None,
        "p99_reduction_mean": round(sum(cuts) / len(cuts), 4) if cuts else None,
        "lost": sum(r[k]["lost"] for r in rows for k in ("off", "on")),
        "duplicate_deliveries": sum(
            r[k]["duplicate_deliveries"] for r in rows for k in ("off", "on")
        ),
        "started_runs_stolen": sum(r["on"]["stealing"].get("started_runs_stolen", 0) for r in rows),
    }
    if args.json:
        print(json.dumps({"summary": summary, "runs": rows}, indent=2))
    else:
        print(
            f"p99 reduction: min {summary['p99_reduction_min']:.1%}, mean "
            f"{summary['p99_reduction_mean']:.1%}; lost {summary['lost']}, duplicate "
            f"deliveries {summary['duplicate_deliveries']}, runs taken off a device "
            f"{summary['started_runs_stolen']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
