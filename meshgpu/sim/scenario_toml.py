"""The TOML form of a scenario: reading it (every key checked, errors that name the key
and the file) and writing a scenario back as TOML that parses to an equal one.

The scenario itself, its parts and its cross-field rules are in
:mod:`meshgpu.sim.scenario`; the tables and keys are documented in ``docs/research.md``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
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
from meshgpu.sim.scenario import (
    BOOTSTRAP_MODES,
    EXTENSION_SECTIONS,
    INVARIANT_NAMES,
    Bootstrap,
    InvariantSettings,
    Scenario,
    validate,
)


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
    """The scenario as TOML that :func:`parse_scenario` reads back to an equal scenario,
    extension tables (``[tasks]``, ``[catalog]``) included: what a failing property test
    prints to reproduce."""
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
    for name, table in scenario.extensions.items():
        text += "\n" + _toml_table(name, table)
    return text


def _toml_table(name: str, table: Mapping[str, Any]) -> str:
    """``[name]`` with its plain keys, then each nested table as ``[name.key]``."""
    nested = {key: value for key, value in table.items() if isinstance(value, Mapping)}
    lines = [f"[{name}]"]
    lines += [
        f"{_toml_key(key)} = {_toml_value(value)}"
        for key, value in table.items()
        if key not in nested
    ]
    text = "\n".join(lines) + "\n"
    for key, value in nested.items():
        text += "\n" + _toml_table(f"{name}.{_toml_key(key)}", value)
    return text


def _toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted one."""
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
