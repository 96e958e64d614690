"""Run a scenario with its checkers and collect everything into one JSON-ready report.

:func:`run_scenario` is the library entry point behind ``meshgpu simulate``: it builds the
:class:`meshgpu.sim.runner.Simulation`, wires the view tracker, the invariant checkers,
the scenario's extensions and any caller-supplied observers, runs it and returns a
:class:`SimulationReport`. The report's ``as_dict()`` is the ``--json`` object
(documented field by field in docs/research.md).

Invariant 10 (determinism) needs a second run in a *different process*: a run repeated in
the same process cannot catch iteration over hash-randomised sets or dicts keyed by
strings, which differ between processes. :func:`replay_hash` reruns the scenario file in a
subprocess with another ``PYTHONHASHSEED`` and compares ``trace_sha256``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from meshgpu.errors import SimulationError
from meshgpu.sim.invariants import convergence_bound, default_checkers, detection_bound
from meshgpu.sim.nodes import NodeFactory
from meshgpu.sim.observers import Observer
from meshgpu.sim.research_metrics import BeliefTrace, ResearchMetrics, distribution
from meshgpu.sim.runner import Simulation
from meshgpu.sim.scenario import EXTENSION_SECTIONS, Scenario
from meshgpu.sim.views import ViewTracker


@dataclass
class SimulationReport:
    """Everything one run measured; ``as_dict()`` is the ``--json`` output."""

    scenario: str
    seed: int
    nodes: int
    virtual_s: float
    wall_s: float
    events: int
    trace_sha256: str
    invariants: dict[str, str]
    invariants_skipped: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every checked invariant holds."""
        return all(value == "ok" for value in self.invariants.values())

    def as_dict(self) -> dict[str, Any]:
        head = {
            "scenario": self.scenario,
            "seed": self.seed,
            "nodes": self.nodes,
            "virtual_s": self.virtual_s,
            "wall_s": round(self.wall_s, 3),
            "events": self.events,
            "trace_sha256": self.trace_sha256,
            "invariants": self.invariants,
            "invariants_skipped": self.invariants_skipped,
        }
        return {**head, **self.metrics}


class CounterTotals(Observer):
    """Sums every node's ``counters`` (those of crashed lives included)."""

    name = "counters"

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    def _add(self, sim: Simulation, index: int) -> None:
        node = sim.nodes[index]
        for key, value in getattr(node, "counters", {}).items():
            self.totals[key] = self.totals.get(key, 0) + int(value)

    def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
        self._add(sim, index)

    def on_finish(self, sim: Simulation, now: float) -> None:
        for index in sim.up_indices():
            self._add(sim, index)

    def metrics(self) -> dict[str, Any]:
        return {"node_counters": dict(sorted(self.totals.items()))}


def build_extensions(scenario: Scenario) -> list[Observer]:
    """Observers built by the scenario's extension tables (see EXTENSION_SECTIONS)."""
    built: list[Observer] = []
    for name, table in scenario.extensions.items():
        module_name, attribute = EXTENSION_SECTIONS[name].split(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        built.append(factory(table, scenario))
    return built


def run_scenario(
    scenario: Scenario,
    observers: Iterable[Observer] = (),
    node_factory: NodeFactory | None = None,
    trace: IO[str] | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> SimulationReport:
    """Run ``scenario`` once with all checkers; never raises on a violation (see ``ok``)."""
    views = ViewTracker()
    sim = Simulation(scenario, node_factory=node_factory, trace=trace, progress=progress)
    checkers = default_checkers(scenario, sim.config, views)
    counters = CounterTotals()
    window = detection_bound(scenario, sim.config) + convergence_bound(scenario, sim.config)
    research: list[Observer] = [ResearchMetrics(views, window)]
    if trace is not None:
        research.append(BeliefTrace())
    extras = [*build_extensions(scenario), *observers]
    sim.observers = [views, *checkers, counters, *research, *extras]
    started = time.perf_counter()
    cpu_started = time.process_time()
    totals = sim.run()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    invariants: dict[str, str] = {}
    skipped: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    for observer in sim.observers:
        invariants.update(observer.invariants())
        skipped.update(getattr(observer, "skipped", dict)())
        metrics.update(observer.metrics())
    metrics["leader_failover"] = distribution(metrics.get("leader_failover_s", []))
    if scenario.notes:
        metrics["notes"] = list(scenario.notes)
    metrics["cpu_s"] = round(cpu, 3)  # wall_s on a shared machine includes waiting
    metrics["detection_bound_s"] = round(detection_bound(scenario, sim.config), 6)
    metrics["lifeguard"] = bool(sim.config.lifeguard)
    metrics["lifeguard_refinements"] = {
        "probe": bool(sim.config.uses_health_probe),
        "suspicion": bool(sim.config.uses_health_suspicion),
        "buddy": bool(sim.config.uses_buddy),
    }
    metrics["network"] = dict(sim.network.counters)
    metrics["simulator"] = dict(sim.counters)
    return SimulationReport(
        scenario=scenario.name,
        seed=scenario.seed,
        nodes=scenario.nodes,
        virtual_s=totals.virtual_s,
        wall_s=wall,
        events=totals.events,
        trace_sha256=totals.trace_sha256,
        invariants=invariants,
        invariants_skipped=skipped,
        metrics=metrics,
    )


def replay_hash(scenario: Scenario) -> str:
    """``trace_sha256`` of the same scenario (file, seed, nodes, duration) run in a fresh
    interpreter with a different ``PYTHONHASHSEED``."""
    if scenario.source == "<inline>":
        raise SimulationError("determinism replay needs a scenario file; this one was inline")
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "1" if env.get("PYTHONHASHSEED") == "0" else "0"
    command = [
        sys.executable,
        "-m",
        "meshgpu.sim",
        scenario.source,
        "--seed",
        str(scenario.seed),
        "--nodes",
        str(scenario.nodes),
        "--duration",
        repr(scenario.duration_s),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SimulationError(f"determinism replay failed: {result.stderr.strip()[-2000:]}")
    return str(json.loads(result.stdout)["trace_sha256"])


def check_determinism(report: SimulationReport, scenario: Scenario) -> None:
    """Add invariant 10's verdict to ``report`` by replaying in another process."""
    other = replay_hash(scenario)
    if other == report.trace_sha256:
        report.invariants["determinism"] = "ok"
    else:
        report.invariants["determinism"] = (
            f"the same seed gave trace_sha256 {report.trace_sha256[:16]}... here and "
            f"{other[:16]}... in a second process (PYTHONHASHSEED differs): something "
            "iterates in hash order or reads outside state"
        )
