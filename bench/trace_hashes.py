"""Reference trace hashes: run every scenario in ``simulations/`` and compare its
``trace_sha256`` with the one recorded in ``bench/trace_hashes.json``.

A refactor or a speed change must leave every hash byte-identical (docs/benchmarks.md,
"Reference trace hashes"); a change that alters protocol behaviour on purpose records new
hashes with ``--record`` and says which and why.

The two large scenarios run shortened (``steady-100`` for 120 virtual seconds,
``mesh-1000`` for 3) unless ``--full`` is given; the recorded file holds both lengths.

Usage::

    python bench/trace_hashes.py                 # check every scenario, print a table
    python bench/trace_hashes.py --only crash-50 --only steady-10
    python bench/trace_hashes.py --record        # write the current hashes as the reference
    python bench/trace_hashes.py --json

Exits 1 when a hash differs from the reference (0 otherwise). Prints wall time per
scenario for orientation only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "simulations"
REFERENCE = Path(__file__).resolve().parent / "trace_hashes.json"
# Scenarios too slow to run whole on every check: their shortened length (virtual seconds).
SHORTENED = {"steady-100": 120.0, "mesh-1000": 3.0}


def run_one(name: str, full: bool) -> dict[str, Any]:
    """Run one scenario (shortened if it is a large one and ``full`` is false)."""
    from meshgpu.sim.report import run_scenario
    from meshgpu.sim.scenario import load_scenario

    scenario = load_scenario(SCENARIOS / f"{name}.toml")
    if not full and name in SHORTENED:
        scenario = dataclasses.replace(scenario, duration_s=SHORTENED[name])
    started = time.perf_counter()
    report = run_scenario(scenario)
    return {
        "scenario": name,
        "duration_s": scenario.duration_s,
        "trace_sha256": report.trace_sha256,
        "wall_s": round(time.perf_counter() - started, 2),
    }


def key_for(name: str, duration_s: float) -> str:
    return f"{name}@{duration_s:g}"


def status(recording: bool, expected: str | None, trace_sha256: str) -> str:
    """How a scenario's hash compares with the reference (or that it is being recorded)."""
    if recording:
        return "recorded"
    if expected is None:
        return "missing"
    return "same" if expected == trace_sha256 else "DIFFERENT"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="scenario name (repeatable)")
    parser.add_argument("--full", action="store_true", help="run the large scenarios whole")
    parser.add_argument("--record", action="store_true", help="write the hashes as the reference")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    names = args.only or sorted(path.stem for path in SCENARIOS.glob("*.toml"))
    reference: dict[str, str] = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    results = []
    for name in names:
        result = run_one(name, args.full)
        key = key_for(name, result["duration_s"])
        expected = reference.get(key)
        result["expected"] = expected
        result["status"] = status(args.record, expected, result["trace_sha256"])
        if args.record:
            reference[key] = result["trace_sha256"]
        results.append(result)
        if not args.json:
            print(
                f"{key:32} {result['trace_sha256'][:16]}  {result['status']:9} "
                f"{result['wall_s']:7.2f} s",
                flush=True,
            )
    if args.record:
        REFERENCE.write_text(json.dumps(dict(sorted(reference.items())), indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any(r["status"] in ("DIFFERENT", "missing") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
