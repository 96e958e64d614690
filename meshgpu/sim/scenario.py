"""Scenario files: the TOML that says what to simulate.

A scenario names the mesh (node count, timing config), the network, how nodes find each
other, the fault schedule, how long to run and what to check. Every table and key is
documented in ``docs/research.md``; unknown keys are a :class:`ConfigError` naming the key,
so a typo never silently runs a different experiment.

This module holds the scenario as data and its cross-field rules; reading the TOML (with
an error naming every bad key) and writing it back are in :mod:`meshgpu.sim.scenario_toml`.

Other parts of meshgpu can add their own top-level tables (a workload, device profiles)
without touching this module: put ``"table": "module:factory"`` in
:data:`EXTENSION_SECTIONS`; the factory is called as ``factory(table, scenario)`` and
returns a :class:`meshgpu.sim.observers.Observer` that joins the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshgpu.errors import ConfigError
from meshgpu.sim.faults import (
    Fault,
    Heal,
    NetworkChange,
    NodeSelector,
    Partition,
)
from meshgpu.sim.network import LinkParams

EXTENSION_SECTIONS: dict[str, str] = {
    "tasks": "meshgpu.sim.task_driver:build",
    "catalog": "meshgpu.sim.catalog_driver:build",
}
"""Extra top-level tables: name -> ``"module:factory"`` building an Observer from it."""

BOOTSTRAP_MODES = ("mdns", "seeds")
INVARIANT_NAMES = ("no_regression", "leader", "convergence", "detection", "accuracy")


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """How nodes learn of each other (the simulated mDNS).

    ``mdns``: every node discovers every other, at a uniform random time in
    ``[0, spread_s]`` (what zeroconf gives on a LAN; n^2 discoveries, fine up to a few
    hundred nodes). ``seeds``: every node is told ``seeds`` random others and the
    protocol's gossip and push-pull do the rest (a static ``--peer`` list; use it for
    1,000 nodes). A restarted node is rediscovered the same way.
    """

    mode: str = "mdns"
    seeds: int = 3
    spread_s: float = 0.5


@dataclass(frozen=True, slots=True)
class InvariantSettings:
    """Which invariants to check and their bounds (design.md section 4)."""

    enabled: tuple[str, ...] = INVARIANT_NAMES
    detection_bound_s: float | None = None
    """Invariant 6: every live node declares a crash within this; None: derived from timing."""
    convergence_c: float = 4.0
    """Invariant 5: views agree within convergence_c * ln(n) protocol periods after a heal."""
    max_false_deaths: int = 0
    """Invariant 7: how many deaths of healthy live nodes are tolerated."""
    quiet_periods: float = 3.0
    """Invariant 4: a component is stable after this many quiet protocol periods."""
    determinism: bool = False
    """Invariant 10: run the scenario again in a subprocess and compare trace hashes."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario; :func:`load_scenario` builds one from a file."""

    name: str
    nodes: int
    duration_s: float
    seed: int = 1
    description: str = ""
    sample_interval_s: float = 0.1
    timing: Mapping[str, Any] = field(default_factory=dict)
    network: LinkParams = field(default_factory=LinkParams)
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    invariants: InvariantSettings = field(default_factory=InvariantSettings)
    faults: tuple[Fault, ...] = ()
    extensions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "<inline>"
    notes: tuple[str, ...] = field(default=(), compare=False)
    """What an override did that the file does not say (``--nodes`` on explicit groups);
    reported with the run."""
    link_count: int = field(default=0, compare=False)
    """How many of ``faults`` (the first ones) are ``[[network.link]]`` overrides; the
    rest are the ``[[fault]]`` tables in file order, numbered from 1 in every message."""

    def with_overrides(
        self, seed: int | None = None, nodes: int | None = None, duration_s: float | None = None
    ) -> Scenario:
        """The scenario with command-line overrides applied, re-validated."""
        changed = replace(
            self,
            seed=self.seed if seed is None else seed,
            nodes=self.nodes if nodes is None else nodes,
            duration_s=self.duration_s if duration_s is None else duration_s,
        )
        validate(changed)
        if nodes is not None and nodes != self.nodes:
            changed = replace(changed, notes=(*self.notes, *_resize_notes(changed, self.nodes)))
        return changed


# -- the TOML form (reading and writing live in meshgpu.sim.scenario_toml) -------------


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    from meshgpu.sim import scenario_toml

    return scenario_toml.load_scenario(path)


def parse_scenario(text: str, source: str = "<inline>") -> Scenario:
    """Parse scenario TOML text; ``source`` names it in error messages."""
    from meshgpu.sim import scenario_toml

    return scenario_toml.parse_scenario(text, source)


def scenario_from_mapping(document: Mapping[str, Any], source: str = "<inline>") -> Scenario:
    """Build a Scenario from an already-parsed TOML document."""
    from meshgpu.sim import scenario_toml

    return scenario_toml.scenario_from_mapping(document, source)


def scenario_to_toml(scenario: Scenario) -> str:
    """The scenario as TOML that parses back to an equal scenario."""
    from meshgpu.sim import scenario_toml

    return scenario_toml.scenario_to_toml(scenario)


# -- cross-field rules ------------------------------------------------------------------------


def validate(scenario: Scenario) -> None:
    """Check cross-field rules: node indices exist, times are in order, timing is valid."""
    where = scenario.source
    if scenario.nodes < 1:
        raise ConfigError(f"{where}: scenario.nodes must be >= 1, got {scenario.nodes}")
    if scenario.duration_s <= 0:
        raise ConfigError(f"{where}: scenario.duration_s must be > 0, got {scenario.duration_s}")
    if scenario.sample_interval_s <= 0:
        raise ConfigError(f"{where}: scenario.sample_interval_s must be > 0")
    for position, fault in enumerate(scenario.faults):
        label = f"{where}: {fault_label(scenario, position)}"
        if fault.at_s < 0:
            raise ConfigError(f"{label}: at_s must be >= 0")
        if fault.at_s >= scenario.duration_s:
            raise ConfigError(
                f"{label}: at_s is at or after the end of the run (duration_s = "
                f"{scenario.duration_s:g}); it would never happen"
            )
        until = getattr(fault, "until_s", None)
        if until is not None and until <= fault.at_s:
            raise ConfigError(f"{label}: until_s ({until}) must be after at_s")
        for selector in _selectors(fault):
            selector.validate(scenario.nodes, label)
        if isinstance(fault, Partition) and any(x <= 0 for x in fault.fractions):
            raise ConfigError(f"{label}: partition fractions must be > 0")
    mesh_config_for(scenario)


def _resize_notes(scenario: Scenario, old_nodes: int) -> list[str]:
    """Say what a new node count does to partitions that list their groups explicitly
    (``fractions`` scale with the mesh; explicit groups do not)."""
    notes = []
    for position, fault in enumerate(scenario.faults):
        if not isinstance(fault, Partition) or not fault.groups:
            continue
        listed = {i for group in fault.resolve(scenario.nodes) for i in group}
        unlisted = [i for i in range(scenario.nodes) if i not in listed]
        label = fault_label(scenario, position)
        if not unlisted:
            continue
        span = _spans(unlisted)
        if scenario.nodes > old_nodes:
            what = f"--nodes {scenario.nodes} (was {old_nodes}) adds nodes its groups do not list"
        else:
            what = f"with --nodes {scenario.nodes} (was {old_nodes}) its groups leave nodes out"
        notes.append(
            f"{label}: {what}: {span} form one more group of their own, cut off from the "
            "listed groups; use fractions = [...] for groups that scale with the mesh"
        )
    return notes


def _spans(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"nodes 0..2, 5"`` (inclusive spans, for messages)."""
    parts: list[str] = []
    start = previous = indices[0]
    for index in [*indices[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}..{previous}")
        if index is not None:
            start = previous = index
    return "nodes " + ", ".join(parts)


def fault_label(scenario: Scenario, position: int) -> str:
    """How messages name ``scenario.faults[position]``: ``fault #3 (crash at 20s)`` for
    the third ``[[fault]]`` table, ``network.link #1`` for a static link override."""
    if position < scenario.link_count:
        return f"network.link #{position + 1}"
    fault = scenario.faults[position]
    return f"fault #{position - scenario.link_count + 1} ({fault.kind} at {fault.at_s:g}s)"


def mesh_config_for(scenario: Scenario) -> Any:
    """The ``MeshConfig`` of the scenario: LAN defaults overridden by ``[timing]``."""
    from meshgpu.core.config import MeshConfig

    try:
        return MeshConfig.from_mapping(dict(scenario.timing))
    except ConfigError as error:
        raise ConfigError(f"{scenario.source}: [timing]: {error}") from error


def _selectors(fault: Fault) -> list[NodeSelector]:
    if isinstance(fault, Partition):
        return list(fault.groups)
    if isinstance(fault, NetworkChange):
        return [s for s in (fault.nodes, fault.sources, fault.destinations) if s is not None]
    if isinstance(fault, Heal):
        return []
    return [fault.nodes]
