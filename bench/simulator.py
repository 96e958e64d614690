"""Simulator speed: the issue's two yardsticks, run through the real scenario runner.

- ``steady-100``: 100 nodes for 600 virtual seconds (target: under 30 s of wall time);
- ``mesh-1000``: 1,000 nodes for 60 virtual seconds, seed-list start-up and one crash
  (target: runs to completion).

For each run it prints wall and CPU seconds (on a shared machine wall time includes
waiting for a core, so CPU time is the figure to compare between runs), events per CPU
second, and CPU microseconds per handled datagram (everything the run spent, simulator
included, divided by the datagrams the nodes handled), plus the correctness figures that
must not move when the code gets faster: invariants, false deaths, detection times.

Usage::

    python bench/simulator.py                   # both runs, rich table
    python bench/simulator.py --json
    python bench/simulator.py --only steady-100 --duration 120

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "steady-100": ROOT / "simulations" / "steady-100.toml",
    "mesh-1000": ROOT / "simulations" / "mesh-1000.toml",
}


def measure(name: str, duration: float | None) -> dict[str, Any]:
    """Run one scenario with every checker on and summarise its speed and correctness."""
    from meshgpu.sim.report import run_scenario
    from meshgpu.sim.scenario import load_scenario

    scenario = load_scenario(RUNS[name])
    if duration is not None:
        scenario = dataclasses.replace(scenario, duration_s=duration)
    report = run_scenario(scenario).as_dict()
    cpu = report["cpu_s"]
    handled = report["node_counters"].get("datagrams_received", 0)
    return {
        "run": name,
        "nodes": report["nodes"],
        "virtual_s": report["virtual_s"],
        "wall_s": report["wall_s"],
        "cpu_s": cpu,
        "events": report["events"],
        "events_per_cpu_s": round(report["events"] / cpu) if cpu else None,
        "datagrams": handled,
        "cpu_us_per_datagram": round(cpu / handled * 1e6, 1) if handled else None,
        "invariants_ok": all(v == "ok" for v in report["invariants"].values()),
        "invariants": report["invariants"],
        "false_deaths": report["false_deaths"],
        "detection_s": report["detection_s"],
        "convergence_s": report["convergence_s"],
        "trace_sha256": report["trace_sha256"],
    }


def render(results: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"simulator speed ({machine['cpu_count']} cores, {machine['load']})")
    for column in (
        "run",
        "virtual s",
        "wall s",
        "cpu s",
        "events",
        "events/cpu s",
        "cpu µs/datagram",
        "invariants",
        "false deaths",
        "detection max s",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    for r in results:
        table.add_row(
            f"{r['run']} ({r['nodes']} nodes)",
            f"{r['virtual_s']:g}",
            f"{r['wall_s']:.1f}",
            f"{r['cpu_s']:.1f}",
            str(r["events"]),
            str(r["events_per_cpu_s"]),
            str(r["cpu_us_per_datagram"]),
            "ok" if r["invariants_ok"] else "VIOLATED",
            str(r["false_deaths"]),
            str(r["detection_s"].get("max")),
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", choices=sorted(RUNS), help="run just this one")
    parser.add_argument("--duration", type=float, help="override the virtual duration (s)")
    args = parser.parse_args(argv)
    names = [args.only] if args.only else list(RUNS)
    machine = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load": f"load {os.getloadavg()[0]:.1f}",
    }
    results = [measure(name, args.duration) for name in names]
    if args.json:
        print(json.dumps({"machine": machine, "runs": results}))
    else:
        render(results, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
