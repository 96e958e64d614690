"""Simulator speed and memory at two mesh sizes, side by side, through the real runner.

- ``steady-100``: 100 nodes for 600 virtual seconds;
- ``mesh-1000``: 1,000 nodes for 60 virtual seconds, seed-list start-up and one crash;
- ``mesh-100`` (only when asked for with ``--only``, or with ``--like-for-like``): the
  same scenario as ``mesh-1000`` at 100 nodes, so that the per-event cost of a mesh
  forming from seed lists can be compared at both sizes (``steady-100`` has no formation
  to speak of: every node is discovered within its first second of 600).

Goal: the CPU cost per event at 1,000 nodes at most twice that at 100, and the peak
resident memory of the 1,000-node run under 500 MB. Each run is its own child process,
so its peak RSS (``ru_maxrss``) is its own. For each run it prints wall and CPU seconds
(on a shared machine wall time includes waiting for a core, so CPU time is the figure to
compare), CPU microseconds per event (the whole run, and the second half of the virtual
time alone: a 1,000-node mesh spends its first seconds forming, when every datagram is
full of news), the piggybacked updates and push-pull records the events carried (per
event: what sets the work of one), the 1,000-node figures as ratios of the 100-node ones,
and the correctness figures that must not move when the code gets faster: invariants,
false deaths, detection times, the trace hash.

Usage::

    python bench/simulator.py                   # both runs, rich table
    python bench/simulator.py --json
    python bench/simulator.py --only steady-100 --duration 120
    python bench/simulator.py --like-for-like    # mesh-100, then mesh-1000
    python bench/simulator.py --child mesh-1000  # one run in this process (JSON)

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshgpu.sim.observers import Observer

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "steady-100": (ROOT / "simulations" / "steady-100.toml", None),
    "mesh-100": (ROOT / "simulations" / "mesh-1000.toml", 100),
    "mesh-1000": (ROOT / "simulations" / "mesh-1000.toml", None),
}
"""Each run: its scenario file and the node count it is run with (None: the file's)."""
DEFAULT_RUNS = ["steady-100", "mesh-1000"]


class HalfwayMark(Observer):
    """Notes the CPU time and event count at the first sample at or after ``at_s``."""

    name = "halfway"

    def __init__(self, at_s: float) -> None:
        self.at_s = at_s
        self.cpu_s: float | None = None
        self.events = 0

    def on_sample(self, sim: Any, now: float) -> None:
        if self.cpu_s is None and now >= self.at_s:
            self.cpu_s = time.process_time()
            self.events = sim.events


def measure(name: str, duration: float | None) -> dict[str, Any]:
    """Run one scenario with every checker on and summarise its speed and correctness."""
    from meshgpu.sim.report import run_scenario
    from meshgpu.sim.scenario import load_scenario

    path, nodes = RUNS[name]
    scenario = load_scenario(path).with_overrides(nodes=nodes, duration_s=duration)
    half = HalfwayMark(scenario.duration_s / 2)
    report = run_scenario(scenario, observers=[half]).as_dict()
    cpu_ended = time.process_time()
    cpu = report["cpu_s"]
    events = report["events"]
    counters = report["node_counters"]
    handled = counters.get("datagrams_received", 0)
    # What the events carry: piggybacked updates and push-pull records, each decoded and
    # merged by its receiver (a formed mesh's pings and acks carry none).
    carried = counters.get("updates_received", 0) + counters.get("push_pull_records_received", 0)
    late_events = events - half.events if half.cpu_s is not None else 0
    late_cpu = cpu_ended - half.cpu_s if half.cpu_s is not None else 0.0
    return {
        "run": name,
        "nodes": report["nodes"],
        "virtual_s": report["virtual_s"],
        "wall_s": report["wall_s"],
        "cpu_s": cpu,
        "events": events,
        "cpu_us_per_event": round(cpu / events * 1e6, 2) if events else None,
        "second_half_cpu_us_per_event": (
            round(late_cpu / late_events * 1e6, 2) if late_events else None
        ),
        "second_half_events": late_events,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "events_per_cpu_s": round(events / cpu) if cpu else None,
        "datagrams": handled,
        "updates_and_records_per_event": round(carried / events, 2) if events else None,
        "cpu_us_per_datagram": round(cpu / handled * 1e6, 1) if handled else None,
        "invariants_ok": all(v == "ok" for v in report["invariants"].values()),
        "invariants": report["invariants"],
        "false_deaths": report["false_deaths"],
        "detection_s": report["detection_s"],
        "convergence_s": report["convergence_s"],
        "trace_sha256": report["trace_sha256"],
    }


def measure_in_child(name: str, duration: float | None) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter, so that its peak RSS is its own."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    if duration is not None:
        command += ["--duration", repr(duration)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """The last run's per-event cost and peak RSS as multiples of the first run's."""
    if len(results) < 2:
        return {}
    small, large = results[0], results[-1]

    def ratio(key: str) -> float | None:
        a, b = small.get(key), large.get(key)
        return round(b / a, 2) if a and b else None

    return {
        "cpu_us_per_event": ratio("cpu_us_per_event"),
        "second_half_cpu_us_per_event": ratio("second_half_cpu_us_per_event"),
        "updates_and_records_per_event": ratio("updates_and_records_per_event"),
        "peak_rss_mb": ratio("peak_rss_mb"),
    }


def render(results: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"simulator speed ({machine['cpu_count']} cores, {machine['load']})")
    for column in (
        "run",
        "virtual s",
        "cpu s",
        "events",
        "cpu µs/event",
        "2nd half µs/event",
        "updates+records / event",
        "peak RSS MB",
        "invariants",
        "false deaths",
        "detection max s",
        "trace",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    for r in results:
        table.add_row(
            f"{r['run']} ({r['nodes']} nodes)",
            f"{r['virtual_s']:g}",
            f"{r['cpu_s']:.1f}",
            str(r["events"]),
            str(r["cpu_us_per_event"]),
            str(r["second_half_cpu_us_per_event"]),
            str(r["updates_and_records_per_event"]),
            str(r["peak_rss_mb"]),
            "ok" if r["invariants_ok"] else "VIOLATED",
            str(r["false_deaths"]),
            str(r["detection_s"].get("max")),
            r["trace_sha256"][:16],
        )
    ratio = ratios(results)
    if ratio:
        table.add_row(
            "ratio (last / first)",
            *[""] * 3,
            f"{ratio['cpu_us_per_event']}x",
            f"{ratio['second_half_cpu_us_per_event']}x",
            f"{ratio['updates_and_records_per_event']}x",
            f"{ratio['peak_rss_mb']}x",
            *[""] * 4,
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", choices=sorted(RUNS), help="run just this one")
    parser.add_argument("--duration", type=float, help="override the virtual duration (s)")
    parser.add_argument(
        "--like-for-like",
        action="store_true",
        help="compare mesh-1000 with the same scenario at 100 nodes (mesh-100)",
    )
    parser.add_argument("--child", choices=sorted(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.duration)))
        return 0
    names = (
        [args.only]
        if args.only
        else ["mesh-100", "mesh-1000"]
        if args.like_for_like
        else DEFAULT_RUNS
    )
    machine = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load": f"load {os.getloadavg()[0]:.1f}",
    }
    results = [measure_in_child(name, args.duration) for name in names]
    if args.json:
        print(json.dumps({"machine": machine, "runs": results, "ratios": ratios(results)}))
    else:
        render(results, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
