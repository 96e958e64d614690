"""The sweep's figures: one PNG and one SVG per ``[[figure]]``, drawn with matplotlib.

matplotlib is the optional ``research`` extra (``pip install 'meshgpu[research]'``):
without it a sweep still writes its CSV files and says that figures were skipped.
Each figure plots a metric's mean over seeds against one parameter, with the 95 %
confidence interval as error bars, one line per value of ``series``; every combination
of the other varied parameters gets its own line too, labelled with it (parameters with
a single value are left out of the labels). Horizontal reference
lines (a published value) are drawn dashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meshgpu.sim.sweep.spec import Figure, SweepSpec
from meshgpu.sim.sweep.tables import summary_rows


def figures_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw_figures(spec: SweepSpec, directory: Path, runs: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Draw every figure of ``spec`` into ``directory``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams["svg.hashsalt"] = "meshgpu"  # stable ids in the SVG
    rows = summary_rows(spec, runs)
    written: list[Path] = []
    for figure in spec.figures:
        axes_figure, axes = pyplot.subplots(figsize=(6.4, 4.0), dpi=100)
        for label, xs, means, lows, highs in _lines(spec, figure, rows):
            errors = [
                [m - lo if lo is not None else 0.0 for m, lo in zip(means, lows, strict=True)],
                [hi - m if hi is not None else 0.0 for m, hi in zip(means, highs, strict=True)],
            ]
            axes.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label or None)
        for number, (y, label) in enumerate(figure.references):
            style = ("--", ":", "-.")[number % 3]
            axes.axhline(y, linestyle=style, color="grey", linewidth=1, label=label or None)
        axes.set_xscale(figure.xscale)
        axes.set_yscale(figure.yscale)
        if figure.yscale == "symlog":
            axes.set_ylim(bottom=0)  # counts: an interval reaching below zero is cut at zero
        axes.set_xlabel(figure.xlabel)
        axes.set_ylabel(figure.ylabel)
        axes.set_title(figure.title or figure.name)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
        axes_figure.tight_layout()
        for suffix in (".png", ".svg"):
            path = directory / f"{figure.name}{suffix}"
            axes_figure.savefig(path, metadata={"Date": None} if suffix == ".svg" else None)
            written.append(path)
        pyplot.close(axes_figure)
    return written


def _lines(
    spec: SweepSpec, figure: Figure, rows: list[dict[str, Any]]
) -> list[tuple[str, list[Any], list[float], list[float | None], list[float | None]]]:
    """(label, x values, means, CI lows, CI highs) per line, x in point order."""
    others = [
        p
        for p in spec.parameters
        if p not in (figure.x, figure.series) and len({repr(r[p]) for r in rows}) > 1
    ]
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(f"{figure.y}.mean") is None:
            continue
        key = tuple([row[figure.series]] if figure.series else []) + tuple(row[p] for p in others)
        grouped.setdefault(key, []).append(row)
    lines = []
    for key, members in grouped.items():
        names = ([figure.series] if figure.series else []) + others
        label = ", ".join(
            f"{v}" if n == figure.series and n == "variant" else f"{n}={v}"
            for n, v in zip(names, key, strict=True)
        )
        members.sort(key=lambda r: _sortable(r[figure.x]))
        lines.append(
            (
                label,
                [r[figure.x] for r in members],
                [r[f"{figure.y}.mean"] for r in members],
                [r[f"{figure.y}.ci95_low"] for r in members],
                [r[f"{figure.y}.ci95_high"] for r in members],
            )
        )
    return lines


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))
