"""Scenario files: the TOML that says what to simulate.

A scenario names the mesh (node count, timing config), the network, how nodes find each
other, the fault schedule, how long to run and what to check. Every table and key is
documented in ``docs/research.md``; unknown keys are a :class:`ConfigError` naming the key,
so a typo never silently runs a different experiment.

Other parts of meshgpu can add their own top-level tables (a workload, device profiles)
without touching this module: put ``"table": "module:factory"`` in
:data:`EXTENSION_SECTIONS`; the factory is called as ``factory(table, scenario)`` and
returns a :class:`meshgpu.sim.observers.Observer` that joins the run.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshgpu.errors import ConfigError
from meshgpu.sim.faults import (
    FAULT_KINDS,
    Crash,
    Fault,
    Heal,
    Leave,
    NetworkChange,
    NodeSelector,
    Partition,
    Restart,
    Slow,
    schedule_to_toml,
)
from meshgpu.sim.network import LINK_PARAMETER_NAMES, LinkParams

EXTENSION_SECTIONS: dict[str, str] = {"tasks": "meshgpu.sim.task_driver:build"}
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


# -- parsing -------------------------------------------------------------------------------


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read scenario {path}: {error.strerror}") from error
    return parse_scenario(text, source=str(path))


def parse_scenario(text: str, source: str = "<inline>") -> Scenario:
    """Parse scenario TOML text; ``source`` names it in error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from error
    return scenario_from_mapping(document, source)


def scenario_from_mapping(document: Mapping[str, Any], source: str = "<inline>") -> Scenario:
    """Build a Scenario from an already-parsed TOML document."""
    reader = _Reader(source)
    known = {
        "scenario",
        "timing",
        "network",
        "bootstrap",
        "invariants",
        "fault",
        *EXTENSION_SECTIONS,
    }
    reader.reject_unknown(document, known, "")
    head = reader.table(document, "scenario")
    reader.reject_unknown(
        head,
        {"name", "description", "nodes", "duration_s", "seed", "sample_interval_s"},
        "scenario",
    )
    network_table = dict(reader.table(document, "network"))
    links = network_table.pop("link", [])
    network = LinkParams().updated(network_table, f"{source}: [network]")
    faults: list[Fault] = [
        _network_link(reader, entry, position)
        for position, entry in enumerate(reader.array(links, "network.link"))
    ]
    faults += [
        _fault(reader, entry, position)
        for position, entry in enumerate(reader.array(document.get("fault", []), "fault"))
    ]
    scenario = Scenario(
        name=reader.get(head, "name", str, "scenario", Path(source).stem),
        description=reader.get(head, "description", str, "scenario", ""),
        nodes=reader.get(head, "nodes", int, "scenario", None),
        duration_s=reader.number(head, "duration_s", "scenario", None),
        seed=reader.get(head, "seed", int, "scenario", 1),
        sample_interval_s=reader.number(head, "sample_interval_s", "scenario", 0.1),
        timing=dict(reader.table(document, "timing")),
        network=network,
        bootstrap=_bootstrap(reader, reader.table(document, "bootstrap")),
        invariants=_invariants(reader, reader.table(document, "invariants")),
        faults=tuple(faults),
        extensions={
            name: dict(reader.table(document, name))
            for name in EXTENSION_SECTIONS
            if name in document
        },
        source=source,
        link_count=len(links),
    )
    validate(scenario)
    return scenario


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


def _bootstrap(reader: _Reader, table: Mapping[str, Any]) -> Bootstrap:
    reader.reject_unknown(table, {"mode", "seeds", "spread_s"}, "bootstrap")
    mode = reader.get(table, "mode", str, "bootstrap", "mdns")
    if mode not in BOOTSTRAP_MODES:
        raise ConfigError(
            f"{reader.source}: bootstrap.mode must be one of {BOOTSTRAP_MODES}, not {mode!r}"
        )
    return Bootstrap(
        mode=mode,
        seeds=reader.get(table, "seeds", int, "bootstrap", 3),
        spread_s=reader.number(table, "spread_s", "bootstrap", 0.5),
    )


def _invariants(reader: _Reader, table: Mapping[str, Any]) -> InvariantSettings:
    settings = {
        "detection_bound_s",
        "convergence_c",
        "max_false_deaths",
        "quiet_periods",
        "determinism",
    }
    reader.reject_unknown(table, set(INVARIANT_NAMES) | settings, "invariants")
    enabled = tuple(n for n in INVARIANT_NAMES if reader.get(table, n, bool, "invariants", True))
    bound = table.get("detection_bound_s")
    return InvariantSettings(
        enabled=enabled,
        detection_bound_s=None
        if bound is None
        else reader.number(table, "detection_bound_s", "invariants", None),
        convergence_c=reader.number(table, "convergence_c", "invariants", 4.0),
        max_false_deaths=reader.get(table, "max_false_deaths", int, "invariants", 0),
        quiet_periods=reader.number(table, "quiet_periods", "invariants", 3.0),
        determinism=reader.get(table, "determinism", bool, "invariants", False),
    )


def _network_link(reader: _Reader, entry: Mapping[str, Any], position: int) -> NetworkChange:
    where = f"network.link #{position + 1}"
    selectors = {"from", "to", "nodes"}
    reader.reject_unknown(entry, selectors | set(LINK_PARAMETER_NAMES), where)
    return NetworkChange(
        at_s=0.0,
        changes=_link_changes(reader, entry, selectors, where),
        nodes=_optional_selector(reader, entry, "nodes", where),
        sources=_optional_selector(reader, entry, "from", where),
        destinations=_optional_selector(reader, entry, "to", where),
    )


def _link_changes(
    reader: _Reader, entry: Mapping[str, Any], skip: set[str], where: str
) -> tuple[tuple[str, float | str], ...]:
    changes = {k: v for k, v in entry.items() if k in LINK_PARAMETER_NAMES and k not in skip}
    LinkParams().updated(changes, f"{reader.source}: {where}")  # type and range check
    return tuple(sorted((k, v if isinstance(v, str) else float(v)) for k, v in changes.items()))


def _fault(reader: _Reader, entry: Mapping[str, Any], position: int) -> Fault:
    where = f"fault #{position + 1}"
    kind = reader.get(entry, "kind", str, where, None)
    if kind not in FAULT_KINDS:
        raise ConfigError(
            f"{reader.source}: {where}.kind must be one of {sorted(FAULT_KINDS)}, not {kind!r}"
        )
    at_s = reader.number(entry, "at_s", where, None)
    common = {"kind", "at_s"}
    if kind in ("crash", "restart", "leave", "slow"):
        common |= {"nodes", "count"}
    if kind in ("crash", "partition", "network", "slow"):
        common |= {"until_s"}
    until = reader.number(entry, "until_s", where, None) if "until_s" in entry else None
    if kind == "heal":
        reader.reject_unknown(entry, common, where)
        return Heal(at_s=at_s)
    if kind == "partition":
        reader.reject_unknown(entry, common | {"groups", "fractions"}, where)
        groups = tuple(
            _selector_from(reader, g, None, f"{where}.groups[{i}]")
            for i, g in enumerate(reader.array(entry.get("groups", []), f"{where}.groups"))
        )
        fractions = tuple(
            float(x) for x in reader.array(entry.get("fractions", []), f"{where}.fractions")
        )
        if bool(groups) == bool(fractions):
            raise ConfigError(
                f"{reader.source}: {where} needs exactly one of 'groups' or 'fractions'"
            )
        return Partition(at_s=at_s, groups=groups, fractions=fractions, until_s=until)
    if kind == "network":
        selectors = {"nodes", "from", "to"}
        reader.reject_unknown(entry, common | selectors | set(LINK_PARAMETER_NAMES), where)
        changes = _link_changes(reader, entry, selectors, where)
        if not changes:
            raise ConfigError(f"{reader.source}: {where} changes no link parameter")
        return NetworkChange(
            at_s=at_s,
            changes=changes,
            nodes=_optional_selector(reader, entry, "nodes", where),
            sources=_optional_selector(reader, entry, "from", where),
            destinations=_optional_selector(reader, entry, "to", where),
            until_s=until,
        )
    nodes = _selector_from(reader, entry.get("nodes", "all"), entry.get("count"), where)
    if kind == "crash":
        reader.reject_unknown(entry, common | {"keep_incarnation"}, where)
        keep = reader.get(entry, "keep_incarnation", bool, where, True)
        return Crash(at_s=at_s, nodes=nodes, until_s=until, keep_incarnation=keep)
    if kind == "restart":
        reader.reject_unknown(entry, common | {"keep_incarnation"}, where)
        keep = reader.get(entry, "keep_incarnation", bool, where, True)
        return Restart(at_s=at_s, nodes=nodes, keep_incarnation=keep)
    if kind == "leave":
        reader.reject_unknown(entry, common | {"linger_s"}, where)
        return Leave(at_s=at_s, nodes=nodes, linger_s=reader.number(entry, "linger_s", where, 1.0))
    reader.reject_unknown(entry, common | {"delay_s", "delay_jitter_s", "tick_delay_s"}, where)
    return Slow(
        at_s=at_s,
        nodes=nodes,
        delay_s=reader.number(entry, "delay_s", where, 0.5),
        delay_jitter_s=reader.number(entry, "delay_jitter_s", where, 0.0),
        tick_delay_s=reader.number(entry, "tick_delay_s", where, 0.0),
        until_s=until,
    )


def _optional_selector(
    reader: _Reader, entry: Mapping[str, Any], key: str, where: str
) -> NodeSelector | None:
    if key not in entry:
        return None
    return _selector_from(reader, entry[key], None, f"{where}.{key}")


def _selector_from(reader: _Reader, raw: Any, count: Any, where: str) -> NodeSelector:
    items = raw if isinstance(raw, list) else [raw]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ConfigError(
                f"{reader.source}: {where}: node selector item {item!r} is not an int or string"
            )
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise ConfigError(f"{reader.source}: {where}.count must be an integer, got {count!r}")
    return NodeSelector(items=tuple(items), count=count)


class _Reader:
    """Typed access to TOML tables with errors that name the file, table and key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def reject_unknown(self, table: Mapping[str, Any], known: set[str], where: str) -> None:
        for key in table:
            if key not in known:
                place = f"[{where}]" if where else "the top level"
                raise ConfigError(
                    f"{self.source}: unknown key {key!r} in {place}; "
                    f"known keys: {', '.join(sorted(known))}"
                )

    def table(self, document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = document.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: [{key}] must be a table")
        return value

    def array(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise ConfigError(f"{self.source}: {where} must be an array")
        return value

    def get(self, table: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
        if key not in table:
            if default is None:
                raise ConfigError(f"{self.source}: {where}.{key} is required")
            return default
        value = table[key]
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
            raise ConfigError(
                f"{self.source}: {where}.{key} must be {kind.__name__}, got {value!r}"
            )
        return value

    def number(
        self, table: Mapping[str, Any], key: str, where: str, default: float | None
    ) -> float:
        if key not in table:
            if default is None:
                raise ConfigError(f"{self.source}: {where}.{key} is required")
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.source}: {where}.{key} must be a number, got {value!r}")
        return float(value)


def scenario_to_toml(scenario: Scenario) -> str:
    """The scenario as TOML that :func:`parse_scenario` reads back to an equal scenario
    (extension tables excepted): what a failing property test prints to reproduce."""
    lines = [
        "[scenario]",
        f"name = {_toml_value(scenario.name)}",
        f"description = {_toml_value(scenario.description)}",
        f"nodes = {scenario.nodes}",
        f"duration_s = {scenario.duration_s!r}",
        f"seed = {scenario.seed}",
        f"sample_interval_s = {scenario.sample_interval_s!r}",
    ]
    if scenario.timing:
        lines += ["", "[timing]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in scenario.timing.items()]
    defaults = LinkParams()
    changed = [
        n for n in LINK_PARAMETER_NAMES if getattr(scenario.network, n) != getattr(defaults, n)
    ]
    if changed:
        lines += ["", "[network]"]
        lines += [f"{n} = {_toml_value(getattr(scenario.network, n))}" for n in changed]
    boot = scenario.bootstrap
    lines += ["", "[bootstrap]", f'mode = "{boot.mode}"', f"seeds = {boot.seeds}"]
    lines.append(f"spread_s = {boot.spread_s!r}")
    checks = scenario.invariants
    lines += ["", "[invariants]"]
    lines += [f"{n} = {_toml_value(n in checks.enabled)}" for n in INVARIANT_NAMES]
    if checks.detection_bound_s is not None:
        lines.append(f"detection_bound_s = {checks.detection_bound_s!r}")
    lines.append(f"convergence_c = {checks.convergence_c!r}")
    lines.append(f"max_false_deaths = {checks.max_false_deaths}")
    lines.append(f"quiet_periods = {checks.quiet_periods!r}")
    lines.append(f"determinism = {_toml_value(checks.determinism)}")
    text = "\n".join(lines) + "\n"
    if scenario.faults:
        text += "\n" + schedule_to_toml(scenario.faults) + "\n"
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
