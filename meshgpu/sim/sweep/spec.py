"""Sweep files: a base scenario, the parameters to vary, the seeds, metrics and figures.

A sweep is a grid: every combination of the ``[parameters]`` values (and of the
``[variants]``, if any) is a *point*; every point runs once per seed. A parameter is a
dotted path into the base scenario's TOML document, so any scenario, timing, network,
fault or extension field can vary without this module knowing it::

    "scenario.nodes"        -> [scenario] nodes
    "timing.probe_interval" -> [timing] probe_interval
    "fault.1.count"         -> the first [[fault]] table's count (numbered from 1, as in
                               every scenario error message)
    "tasks.workload.rate_per_s"

Values are a list, or a range table: ``{from = 10, to = 100, step = 10}`` (``to``
included) or ``{from = 8, to = 1024, count = 8, scale = "log"}``. A variant is a named
bundle of such assignments (the Lifeguard ablation: "plain SWIM" sets three timing keys
at once); the ``variant`` column holds its name. Everything about the points is resolved
and every point's scenario validated before the first run starts, so a typo fails at once.

The full format is in docs/research.md ("Sweeps").
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshgpu.errors import ConfigError
from meshgpu.sim.scenario import Scenario, scenario_from_mapping

VARIANT_COLUMN = "variant"
NONDETERMINISTIC_METRICS = frozenset({"wall_s", "cpu_s"})
"""Report fields that depend on the machine, never written to the CSV files (same spec
and seeds must give the same bytes); the per-run JSON files keep them."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One plot: a metric's mean (with its 95 % interval) against a parameter, one line
    per value of ``series`` (a parameter or ``variant``), optional horizontal references."""

    name: str
    x: str
    y: str
    series: str | None = None
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xscale: str = "linear"
    yscale: str = "linear"
    references: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Point:
    """One parameter combination: its column values and the TOML document it runs."""

    index: int
    values: tuple[tuple[str, Any], ...]
    document: Mapping[str, Any]

    @property
    def key(self) -> str:
        """What the point runs, hashed: a run is reused by any sweep with the same
        scenario document and seed, whatever its grid (more seeds, more sizes)."""
        text = json.dumps(self.document, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """A parsed sweep file; :func:`load_sweep` builds one."""

    name: str
    description: str
    source: str
    scenario_path: str
    parameters: tuple[str, ...]
    """Column names of the varied parameters, in file order (``variant`` first if any)."""
    points: tuple[Point, ...]
    seeds: tuple[int, ...]
    metrics: tuple[str, ...] | None
    """Dotted report paths to keep; None: every numeric field of the report."""
    figures: tuple[Figure, ...]
    fingerprint: str
    """SHA-256 of what determines the results (points, seeds, metrics)."""

    def scenario(self, point: Point, seed: int) -> Scenario:
        return build_scenario(point.document, seed, self.scenario_path)

    @property
    def run_count(self) -> int:
        return len(self.points) * len(self.seeds)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep file, resolve its grid and validate every point's scenario."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read sweep {path}: {error.strerror}") from error
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    return sweep_from_mapping(document, path)


def sweep_from_mapping(document: Mapping[str, Any], path: Path) -> SweepSpec:
    where = str(path)
    _reject_unknown(document, {"sweep", "parameters", "variants", "figure"}, "the top level", where)
    head = _table(document, "sweep", where)
    _reject_unknown(head, {"name", "description", "scenario", "seeds", "metrics"}, "[sweep]", where)
    if "scenario" not in head or not isinstance(head["scenario"], str):
        raise ConfigError(f"{where}: sweep.scenario (the base scenario file) is required")
    scenario_path = (path.parent / head["scenario"]).resolve()
    try:
        base = tomllib.loads(scenario_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(
            f"{where}: cannot read scenario {scenario_path}: {error.strerror}"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{scenario_path} is not valid TOML: {error}") from error
    seeds = _seeds(head.get("seeds", [1]), where)
    metrics = head.get("metrics")
    if metrics is not None and (
        not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics) or not metrics
    ):
        raise ConfigError(f"{where}: sweep.metrics must be a non-empty list of report fields")
    parameters = {
        name: _values(name, raw, where)
        for name, raw in _table(document, "parameters", where).items()
    }
    variants = _table(document, "variants", where)
    if VARIANT_COLUMN in parameters:
        raise ConfigError(f"{where}: {VARIANT_COLUMN!r} is reserved for [variants]")
    axes: list[tuple[str, list[Any]]] = []
    if variants:
        for name, table in variants.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: [variants.{name}] must be a table of path = value")
        axes.append((VARIANT_COLUMN, list(variants)))
    axes += list(parameters.items())
    points: list[Point] = []
    for index, combination in enumerate(itertools.product(*(values for _, values in axes))):
        values = tuple(zip((name for name, _ in axes), combination, strict=True))
        point_document = copy.deepcopy(base)
        for name, value in values:
            if name == VARIANT_COLUMN:
                for key, assigned in variants[value].items():
                    _assign(point_document, key, assigned, f"{where}: [variants.{value}]")
            else:
                _assign(point_document, name, value, f"{where}: [parameters]")
        point = Point(index, values, point_document)
        build_scenario(point_document, seeds[0], str(scenario_path), label=_label(values))
        points.append(point)
    figures = tuple(
        _figure(entry, position, [name for name, _ in axes], where)
        for position, entry in enumerate(_array(document.get("figure", []), "figure", where))
    )
    names = [figure.name for figure in figures]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two [[figure]] tables share a name")
    for figure in figures:
        if metrics is not None and figure.y not in metrics:
            raise ConfigError(
                f"{where}: figure {figure.name!r} plots {figure.y!r}, which is not in sweep.metrics"
            )
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "points": [[list(p.values), p.document] for p in points],
                "seeds": seeds,
                "metrics": metrics,
            },
            sort_keys=True,
            default=repr,
        ).encode()
    ).hexdigest()
    return SweepSpec(
        name=str(head.get("name", path.stem)),
        description=str(head.get("description", "")),
        source=where,
        scenario_path=str(scenario_path),
        parameters=tuple(name for name, _ in axes),
        points=tuple(points),
        seeds=tuple(seeds),
        metrics=None if metrics is None else tuple(metrics),
        figures=figures,
        fingerprint=fingerprint,
    )


def build_scenario(
    document: Mapping[str, Any], seed: int, source: str, label: str = ""
) -> Scenario:
    """The scenario of one run: the point's document with ``scenario.seed`` set."""
    run_document = copy.deepcopy(dict(document))
    head = dict(run_document.get("scenario", {}))
    head["seed"] = seed
    run_document["scenario"] = head
    try:
        return scenario_from_mapping(run_document, source)
    except ConfigError as error:
        raise ConfigError(f"{error} (sweep point {label})" if label else str(error)) from error


def _label(values: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values) or "(base scenario)"


def _assign(document: dict[str, Any], path: str, value: Any, where: str) -> None:
    """Set ``path`` (dotted; array items numbered from 1) in ``document`` to ``value``."""
    parts = path.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: {path!r} is not a dotted path like 'timing.probe_interval'")
    container: Any = document
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(container, list):
            if not part.isdigit() or not 1 <= int(part) <= len(container):
                raise ConfigError(
                    f"{where}: {path!r}: {'.'.join(parts[:depth])} has {len(container)} "
                    f"entries, numbered from 1; {part!r} is not one of them"
                )
            if last:
                container[int(part) - 1] = value
                return
            container = container[int(part) - 1]
        elif isinstance(container, dict):
            if last:
                container[part] = value
                return
            if part not in container:
                if part.isdigit():
                    raise ConfigError(f"{where}: {path!r}: no array named {parts[depth - 1]!r}")
                container[part] = {}
            container = container[part]
        else:
            raise ConfigError(
                f"{where}: {path!r}: {'.'.join(parts[:depth])} is a value, not a table or array"
            )


def _seeds(raw: Any, where: str) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise ConfigError(f"{where}: sweep.seeds = N must be >= 1 (seeds 1..N)")
        return list(range(1, raw + 1))
    if (
        isinstance(raw, list)
        and raw
        and all(isinstance(s, int) and not isinstance(s, bool) for s in raw)
    ):
        if len(set(raw)) != len(raw):
            raise ConfigError(f"{where}: sweep.seeds lists a seed twice")
        return list(raw)
    raise ConfigError(f"{where}: sweep.seeds must be a count N (seeds 1..N) or a list of ints")


def _values(name: str, raw: Any, where: str) -> list[Any]:
    """A parameter's values from a list or a range table."""
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"{where}: parameter {name!r} has no values")
        if len({json.dumps(v, sort_keys=True) for v in raw}) != len(raw):
            raise ConfigError(f"{where}: parameter {name!r} lists a value twice")
        return raw
    if not isinstance(raw, dict):
        return [raw]
    _reject_unknown(raw, {"from", "to", "step", "count", "scale"}, f"parameter {name!r}", where)
    start, stop = raw.get("from"), raw.get("to")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, stop)):
        raise ConfigError(f"{where}: parameter {name!r}: a range needs numbers 'from' and 'to'")
    assert isinstance(start, int | float) and isinstance(stop, int | float)
    integral = isinstance(start, int) and isinstance(stop, int)
    if ("step" in raw) == ("count" in raw):
        raise ConfigError(f"{where}: parameter {name!r}: a range needs exactly one of step, count")
    if "step" in raw:
        step = raw["step"]
        if not isinstance(step, int | float) or isinstance(step, bool) or step <= 0 or stop < start:
            raise ConfigError(f"{where}: parameter {name!r}: step must be > 0 and 'to' >= 'from'")
        integral = integral and isinstance(step, int)
        count = math.floor((stop - start) / step + 1e-9) + 1
        values = [start + i * step for i in range(count)]
    else:
        count = raw["count"]
        scale = raw.get("scale", "linear")
        if not isinstance(count, int) or isinstance(count, bool) or count < 2:
            raise ConfigError(f"{where}: parameter {name!r}: count must be an integer >= 2")
        if scale == "linear":
            values = [start + (stop - start) * i / (count - 1) for i in range(count)]
        elif scale == "log":
            if start <= 0 or stop <= 0:
                raise ConfigError(f"{where}: parameter {name!r}: a log range needs from, to > 0")
            ratio = stop / start
            values = [start * ratio ** (i / (count - 1)) for i in range(count)]
        else:
            raise ConfigError(f"{where}: parameter {name!r}: scale must be 'linear' or 'log'")
    values = sorted({round(v) for v in values}) if integral else [round(v, 12) for v in values]
    return values


def _figure(entry: Any, position: int, columns: list[str], where: str) -> Figure:
    label = f"[[figure]] #{position + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {label} must be a table")
    known = {"name", "x", "y", "series", "title", "xlabel", "ylabel", "xscale", "yscale"}
    _reject_unknown(entry, known | {"reference"}, label, where)
    for key in ("name", "x", "y"):
        if not isinstance(entry.get(key), str):
            raise ConfigError(f"{where}: {label} needs {key} (a string)")
    for key in ("x", "series"):
        if key in entry and entry[key] not in columns:
            raise ConfigError(
                f"{where}: {label}.{key} = {entry[key]!r} is not a varied parameter "
                f"({', '.join(columns) or 'none'})"
            )
    for key in ("xscale", "yscale"):
        if entry.get(key, "linear") not in ("linear", "log", "symlog"):
            raise ConfigError(f"{where}: {label}.{key} must be 'linear', 'log' or 'symlog'")
    references = []
    for reference in _array(entry.get("reference", []), f"{label}.reference", where):
        if not isinstance(reference, dict) or not isinstance(reference.get("y"), int | float):
            raise ConfigError(f"{where}: {label}.reference entries need y (a number) and label")
        references.append((float(reference["y"]), str(reference.get("label", ""))))
    return Figure(
        name=entry["name"],
        x=entry["x"],
        y=entry["y"],
        series=entry.get("series"),
        title=str(entry.get("title", "")),
        xlabel=str(entry.get("xlabel", entry["x"])),
        ylabel=str(entry.get("ylabel", entry["y"])),
        xscale=entry.get("xscale", "linear"),
        yscale=entry.get("yscale", "linear"),
        references=tuple(references),
    )


def _table(document: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _array(value: Any, key: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {key} must be an array of tables")
    return value


def _reject_unknown(table: Mapping[str, Any], known: set[str], place: str, where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key!r} in {place}; known keys: {', '.join(sorted(known))}"
            )
