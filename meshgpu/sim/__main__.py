"""``python -m meshgpu.sim SCENARIO [--seed N] [--nodes N] [--duration S]``: print the
run's ``trace_sha256`` as JSON. Used by the determinism replay (a fresh process with a
different ``PYTHONHASHSEED``); people use ``meshgpu simulate``."""

from __future__ import annotations

import argparse
import json

from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m meshgpu.sim")
    parser.add_argument("scenario")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--duration", type=float)
    arguments = parser.parse_args()
    scenario = load_scenario(arguments.scenario).with_overrides(
        seed=arguments.seed, nodes=arguments.nodes, duration_s=arguments.duration
    )
    report = run_scenario(scenario)
    print(json.dumps({"trace_sha256": report.trace_sha256, "events": report.events}))


if __name__ == "__main__":
    main()
