"""The deterministic discrete-event network simulator: N real ``Node`` cores on a
simulated network, a fault schedule, and the design's invariant checkers.

Public names are re-exported here; everything else in the subpackage may change. Start at
:func:`run_scenario` (what ``meshgpu simulate`` calls) and docs/research.md.
"""

from meshgpu.sim.faults import schedule_to_toml
from meshgpu.sim.observers import Observer
from meshgpu.sim.report import SimulationReport, run_scenario
from meshgpu.sim.runner import Simulation
from meshgpu.sim.scenario import (
    EXTENSION_SECTIONS,
    Scenario,
    load_scenario,
    parse_scenario,
    scenario_to_toml,
)

__all__ = [
    "EXTENSION_SECTIONS",
    "Observer",
    "Scenario",
    "Simulation",
    "SimulationReport",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
    "scenario_to_toml",
    "schedule_to_toml",
]
