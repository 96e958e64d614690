"""The sweep's tables: ``runs.csv`` (one row per run) and ``summary.csv`` (one row per
parameter point, statistics over seeds).

Both are written from the per-run JSON files alone, in a fixed order (point, then seed)
with fixed number formatting, so the same spec and seeds give the same bytes whatever
the order in which worker processes finished, and whether the sweep was resumed.

Statistics over the seeds of a point: mean, median, p5 and p95 (linear interpolation
between order statistics, numpy's default), and a 95 % confidence interval of the mean
from Student's t distribution (``mean +- t(0.975, n-1) * s / sqrt(n)``; empty with one
seed). Runs where a metric is missing (``None``: no crash happened, so no detection
time) are left out of that metric's statistics; ``n_<metric>`` says how many counted.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy

from meshgpu.sim.sweep.spec import NONDETERMINISTIC_METRICS, SweepSpec

RUN_COLUMNS = ("point", "seed")
STATISTICS = ("mean", "median", "p5", "p95", "ci95_low", "ci95_high")

_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
"""Student's t 0.975 quantiles for 1..30 degrees of freedom (any statistics table, e.g.
NIST/SEMATECH e-Handbook 1.3.6.7.2). numpy has no t distribution and scipy is not a
dependency; beyond 30 the Cornish-Fisher expansion below is exact to three decimals."""


def t_quantile_975(degrees: int) -> float:
    """Student's t 0.975 quantile (the 95 % two-sided interval's multiplier)."""
    if degrees < 1:
        raise ValueError("t quantile needs at least one degree of freedom")
    if degrees <= len(_T_975):
        return _T_975[degrees - 1]
    z = NormalDist().inv_cdf(0.975)
    return z + (z**3 + z) / (4 * degrees) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * degrees**2)


def flatten(report: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numeric and boolean leaves of a report as dotted names (``detection_s.p50``);
    lists (raw samples) and strings are left to the per-run JSON."""
    flat: dict[str, Any] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif value is None or isinstance(value, bool | int | float):
            flat[name] = value
    return flat


def metric_columns(spec: SweepSpec, runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The metric columns: the spec's list, or every numeric field any run reported
    (sorted, so the set of runs, not their order, decides)."""
    if spec.metrics is not None:
        return list(spec.metrics)
    names: set[str] = set()
    for run in runs:
        names.update(flatten(run.get("report", {})))
    skip = NONDETERMINISTIC_METRICS | {"seed"}
    return sorted(n for n in names if n not in skip and not n.startswith("invariants"))


def unreported_metrics(spec: SweepSpec, runs: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The spec's metrics that no run's report holds, not even undefined (a report keeps
    its fields, ``None`` where a run had no sample), each with the nearest field names
    the reports do hold: a misspelt metric, whose columns would be empty. Nothing when
    no run has a report to judge by (every run raised)."""
    if spec.metrics is None:
        return {}
    names: set[str] = set()
    for run in runs:
        names.update(flatten(run.get("report") or {}))
    if not names:
        return {}
    known = sorted(names)
    return {
        metric: difflib.get_close_matches(metric, known, n=3, cutoff=0.6)
        for metric in spec.metrics
        if metric not in names
    }


def format_value(value: Any) -> str:
    """One CSV cell: empty for missing, 0/1 for booleans, ``repr`` of a float rounded to
    nine significant digits (stable across platforms; enough for any measured time)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return repr(float(f"{value:.9g}"))
    return str(value)


def runs_csv(spec: SweepSpec, runs: Sequence[Mapping[str, Any]]) -> str:
    """``runs.csv``: point, each parameter, seed, ok, error, each metric."""
    metrics = metric_columns(spec, runs)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*RUN_COLUMNS[:1], *spec.parameters, "seed", "ok", "error", *metrics])
    for run in sorted(runs, key=lambda r: (r["point"], spec.seeds.index(r["seed"]))):
        point = spec.points[run["point"]]
        flat = flatten(run.get("report", {}))
        writer.writerow(
            [
                run["point"],
                *(format_value(v) for _, v in point.values),
                run["seed"],
                format_value(run.get("ok")),
                run.get("error", ""),
                *(format_value(_number(flat.get(m))) for m in metrics),
            ]
        )
    return out.getvalue()


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """The statistics of one metric at one point (None where undefined)."""
    if not values:
        return dict.fromkeys(STATISTICS)
    data = numpy.asarray(values, dtype=float)
    mean = float(data.mean())
    result: dict[str, float | None] = {
        "mean": mean,
        "median": float(numpy.median(data)),
        "p5": float(numpy.percentile(data, 5)),
        "p95": float(numpy.percentile(data, 95)),
        "ci95_low": None,
        "ci95_high": None,
    }
    if len(data) > 1:
        half = t_quantile_975(len(data) - 1) * float(data.std(ddof=1)) / math.sqrt(len(data))
        result["ci95_low"] = mean - half
        result["ci95_high"] = mean + half
    return result


def summary_rows(spec: SweepSpec, runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per point: its parameter values, ``runs``, and per metric ``n_`` and statistics."""
    metrics = metric_columns(spec, runs)
    by_point: dict[int, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_point.setdefault(run["point"], []).append(run)
    rows = []
    for point in spec.points:
        members = by_point.get(point.index, [])
        row: dict[str, Any] = {"point": point.index, **dict(point.values), "runs": len(members)}
        flats = [flatten(run.get("report", {})) for run in members if not run.get("error")]
        for metric in metrics:
            samples = [v for v in (_number(f.get(metric)) for f in flats) if v is not None]
            row[f"n_{metric}"] = len(samples)
            for statistic, value in summarize(samples).items():
                row[f"{metric}.{statistic}"] = value
        rows.append(row)
    return rows


def summary_csv(spec: SweepSpec, runs: Sequence[Mapping[str, Any]]) -> str:
    rows = summary_rows(spec, runs)
    metrics = metric_columns(spec, runs)
    header = ["point", *spec.parameters, "runs"]
    for metric in metrics:
        header += [f"n_{metric}", *(f"{metric}.{s}" for s in STATISTICS)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([format_value(row.get(column)) for column in header])
    return out.getvalue()


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    return None
