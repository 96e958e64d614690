"""``meshgpu simulate``: run a research scenario in the deterministic simulator.

Thin: parse options, :func:`meshgpu.sim.report.run_scenario`, render (a rich summary or
one JSON object). Exit status: 0 when every checked invariant holds, 1 when one is
violated, 2 when the scenario cannot be run (bad file, bad key, a node raised).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click

EXIT_VIOLATION = 1
EXIT_ERROR = 2


@click.command("simulate")
@click.argument(
    "scenario_path", metavar="SCENARIO.toml", type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--seed", type=int, help="Override the scenario's seed.")
@click.option("--nodes", type=click.IntRange(min=1), help="Override the node count.")
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), help="Override duration (virtual s)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the event trace (JSON lines) to this file; its SHA-256 is trace_sha256.",
)
@click.option(
    "--check-determinism",
    is_flag=True,
    help="Run again in a second process (other PYTHONHASHSEED) and compare trace hashes.",
)
def simulate(
    scenario_path: Path,
    seed: int | None,
    nodes: int | None,
    duration: float | None,
    as_json: bool,
    trace_path: Path | None,
    check_determinism: bool,
) -> None:
    """Run SCENARIO.toml: N real mesh cores on a simulated network with faults.

    Checks the design's invariants (no regression, one leader per view, convergence,
    detection, accuracy; determinism with --check-determinism or when the scenario asks)
    and reports detection times, false deaths, convergence and leader changes. The
    scenario format is described in docs/research.md.
    """
    from rich.console import Console

    from meshgpu.errors import MeshError
    from meshgpu.sim.report import check_determinism as replay_check
    from meshgpu.sim.report import run_scenario
    from meshgpu.sim.scenario import load_scenario

    errors = Console(stderr=True)
    try:
        scenario = load_scenario(scenario_path).with_overrides(
            seed=seed, nodes=nodes, duration_s=duration
        )
        for note in scenario.notes:
            errors.print(f"note: {note}", highlight=False, soft_wrap=True)
        with _Progress(errors, scenario.name) as progress:
            if trace_path is not None:
                with _trace_file(trace_path) as trace:
                    report = run_scenario(scenario, trace=trace, progress=progress.update)
            else:
                report = run_scenario(scenario, progress=progress.update)
        if check_determinism or scenario.invariants.determinism:
            replay_check(report, scenario)
    except MeshError as error:
        click.echo(f"meshgpu simulate: {error}", err=True)
        sys.exit(EXIT_ERROR)
    except OSError as error:  # the trace file mid-run (a full disk), or a replay's fork
        where = f"cannot write {trace_path}" if trace_path is not None else "system error"
        click.echo(f"meshgpu simulate: {where}: {error.strerror or error}", err=True)
        sys.exit(EXIT_ERROR)
    data = report.as_dict()
    if as_json:
        click.echo(json.dumps(data, sort_keys=False))
    else:
        _render(Console(), data, scenario.description)
    if not report.ok:
        sys.exit(EXIT_VIOLATION)


def _trace_file(path: Path) -> TextIO:
    """The trace file, opened before the run: a ConfigError naming it when it cannot
    be (it printed a bare ``[Errno 2] No such file or directory: '...'``)."""
    try:
        return path.open("w", encoding="utf-8")
    except OSError as error:
        from meshgpu.errors import ConfigError

        raise ConfigError(
            f"cannot write the trace to {path}: {error.strerror}"
            + ("" if path.parent.is_dir() else f" (no directory {path.parent})")
        ) from None


class _Progress:
    """Virtual-time progress on stderr: a rich bar on a terminal, a line per 10 % otherwise."""

    def __init__(self, console: Any, name: str) -> None:
        self.console = console
        self.name = name
        self.bar: Any = None
        self.task: Any = None
        self.next_line = 0.1
        self.started = time.perf_counter()

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.1f}/{task.total:.0f} virtual s"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.__enter__()
        return self

    def update(self, now: float, until: float) -> None:
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(f"simulating {self.name}", total=until)
            self.bar.update(self.task, completed=now)
        elif now >= self.next_line * until and time.perf_counter() - self.started > 2.0:
            self.console.print(
                f"simulate {self.name}: {100 * now / until:.0f}% ({now:.1f}/{until:.0f} "
                f"virtual s, {time.perf_counter() - self.started:.1f} s wall)",
                highlight=False,
            )
            self.next_line = int(10 * now / until) / 10 + 0.1

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _render(console: Any, data: dict[str, Any], description: str) -> None:
    from rich.table import Table

    title = f"{data['scenario']}: {data['nodes']} nodes, seed {data['seed']}"
    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column("measure", style="bold")
    summary.add_column("value")
    detection = data.get("detection_s", {})
    rows = [
        ("virtual time", f"{data['virtual_s']:.1f} s in {data['wall_s']:.2f} s wall"),
        ("events", f"{data['events']:,}"),
        ("trace_sha256", data["trace_sha256"]),
        ("lifeguard", "on" if data.get("lifeguard") else "off (plain SWIM)"),
        (
            "detection",
            f"p50 {_seconds(detection.get('p50'))}, max {_seconds(detection.get('max'))} "
            f"over {detection.get('count', 0)} (observer, crash) pairs; "
            f"bound {_seconds(data.get('detection_bound_s'))}",
        ),
        ("suspicions", str(data.get("suspicions"))),
        (
            "false deaths",
            f"{data.get('false_deaths')} ({data.get('false_deaths_healthy')} of healthy nodes; "
            f"{data.get('falsely_dead_nodes')} distinct nodes)",
        ),
        (
            "convergence",
            f"{_seconds(data.get('convergence_s'))} after {data.get('convergence_after')} "
            f"(bound {_seconds(data.get('convergence_bound_s'))})",
        ),
        ("leader changes", str(data.get("leader_changes"))),
        (
            "leader failover",
            ", ".join(_seconds(x) for x in data.get("leader_failover_s", [])) or "-",
        ),
        (
            "datagrams",
            ", ".join(f"{k} {v:,}" for k, v in data.get("network", {}).items()),
        ),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    if description:
        console.print(description.strip(), highlight=False)
    console.print(summary)
    verdicts = Table(title="invariants", title_justify="left")
    verdicts.add_column("invariant", style="bold")
    verdicts.add_column("verdict")
    for name, verdict in data["invariants"].items():
        verdicts.add_row(name, "[green]ok[/]" if verdict == "ok" else f"[red]{verdict}[/]")
    for name, reason in data.get("invariants_skipped", {}).items():
        verdicts.add_row(name, f"[yellow]not checked:[/] {reason}")
    console.print(verdicts)


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.3f} s"
