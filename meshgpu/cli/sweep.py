"""``meshgpu sweep``: run a scenario over a grid of parameters and seeds.

Thin: load the sweep file (:mod:`meshgpu.sim.sweep`), run it in worker processes with a
progress bar, write the tables and, when matplotlib is installed, the figures. Exit
status: 0 when every run finished (whatever the invariants said: a sweep measures, the
``ok`` column records them), 1 when some runs raised, 2 when the sweep cannot be run (bad
file, a directory holding another sweep), 130 when interrupted (what finished is saved).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

EXIT_RUN_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


@click.command("sweep")
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for runs/, runs.csv, summary.csv and the figures.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default: every core).",
)
@click.option("--resume", is_flag=True, help="Keep the runs already in --out; run the rest.")
def sweep(spec_path: Path, out: Path, jobs: int | None, resume: bool) -> None:
    """Run SPEC.toml: a base scenario over a grid of parameters, once per seed.

    Each finished run is written at once to OUT/runs/ (so an interrupted sweep continues
    with --resume); then OUT/runs.csv (one row per run), OUT/summary.csv (per point:
    mean, median, p5, p95 and a 95% confidence interval over seeds) and one PNG and SVG
    per figure (needs matplotlib: pip install 'meshgpu[research]'). The same spec and
    seeds give the same CSV bytes. The format is in docs/research.md, "Sweeps".
    """
    from rich.console import Console

    from meshgpu.errors import MeshError
    from meshgpu.sim.sweep import draw_figures, figures_available, load_sweep, run_sweep
    from meshgpu.sim.sweep.tables import unreported_metrics

    errors = Console(stderr=True)
    workers = jobs or os.cpu_count() or 1
    try:
        spec = load_sweep(spec_path)
    except MeshError as error:
        click.echo(f"meshgpu sweep: {error}", err=True)
        sys.exit(EXIT_ERROR)
    errors.print(
        f"sweep {spec.name}: {len(spec.points)} points x {len(spec.seeds)} seeds = "
        f"{spec.run_count} runs, {min(workers, spec.run_count)} worker(s)",
        highlight=False,
    )
    try:
        with _Progress(errors, spec.name, spec.run_count) as progress:
            result = run_sweep(spec, out, workers, resume=resume, progress=progress.update)
    except MeshError as error:
        click.echo(f"meshgpu sweep: {error}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        saved = len(list((out / "runs").glob("*-s*.json")))
        click.echo(
            f"meshgpu sweep: interrupted; {saved} of {spec.run_count} runs are saved in "
            f"{out / 'runs'}; run again with --resume to finish",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    click.echo(
        f"{result.ran} run(s) in {result.wall_s:.1f} s"
        + (f", {result.reused} kept from before" if result.reused else "")
        + f": {out / 'runs.csv'}, {out / 'summary.csv'}"
    )
    if spec.figures:
        if figures_available():
            written = draw_figures(spec, out, result.runs)
            click.echo("figures: " + ", ".join(str(p) for p in written if p.suffix == ".png"))
        else:
            click.echo(
                f"figures skipped ({len(spec.figures)}): matplotlib is not installed; "
                "pip install 'meshgpu[research]' and run again with --resume to draw them"
            )
    if result.failed:
        click.echo(
            f"meshgpu sweep: {result.failed} run(s) raised; see the error column of runs.csv",
            err=True,
        )
    # A misspelt metric gave empty columns and status 0: the spec is bad (status 2),
    # found only once reports exist; its runs are kept for --resume.
    unreported = unreported_metrics(spec, result.runs)
    for metric, near in unreported.items():
        click.echo(
            f"meshgpu sweep: metric {metric!r} is in no run's report, so its columns are "
            "empty"
            + (f"; did you mean {', '.join(near)}?" if near else "")
            + " (`meshgpu simulate SCENARIO --json` shows a report's fields)",
            err=True,
        )
    if unreported:
        click.echo(
            "meshgpu sweep: fix sweep.metrics and run again with --resume (the runs are kept)",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    if result.failed:
        sys.exit(EXIT_RUN_FAILED)


class _Progress:
    """Runs done on stderr: a rich bar on a terminal, one line per run otherwise."""

    def __init__(self, console: Any, name: str, total: int) -> None:
        self.console = console
        self.name = name
        self.total = total
        self.bar: Any = None
        self.task: Any = None
        self.started = time.perf_counter()

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(f"sweep {self.name}", total=self.total)
        return self

    def update(self, done: int, total: int, record: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        # A sweep with no [parameters] (seeds only) has no values: "(, seed 1" before.
        point = [f"{k}={v}" for k, v in record.get("values", {}).items()]
        where = ", ".join([*point, f"seed {record['seed']}"])
        status = "error" if record.get("error") else ("ok" if record.get("ok") else "violation")
        self.console.print(
            f"sweep {self.name}: {done}/{total} ({where}: {status}; "
            f"{time.perf_counter() - self.started:.0f} s)",
            highlight=False,
            soft_wrap=True,
        )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
