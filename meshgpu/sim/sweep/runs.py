"""Running a sweep: every (point, seed) once, in worker processes, each result on disk
the moment it is finished.

The output directory holds ``sweep.json`` (the spec's name and fingerprint, for the
reader), one ``runs/KEY-sSEED.json`` per finished run (the full ``--json`` report,
written to a temporary name and renamed, so a file that exists is complete; ``KEY``
hashes the point's scenario document), then ``runs.csv`` and ``summary.csv`` built from
those files alone. An interrupted sweep therefore resumes (``resume=True``) by skipping
the runs whose files exist; and because a run file is named by what it ran, not by its
place in the grid, a sweep given more seeds or more parameter values reuses every run it
shares with the old one. Run files of points no longer in the spec stay on disk and out
of the tables.

Workers are separate processes (``spawn``: nothing of the parent's threads or state is
inherited), each running whole scenarios; a run is deterministic in its seed, so the
number of workers and the order they finish in change nothing in the tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from meshgpu.errors import ConfigError, MeshError
from meshgpu.sim.sweep.spec import Point, SweepSpec, build_scenario
from meshgpu.sim.sweep.tables import runs_csv, summary_csv

STATE_FILE = "sweep.json"
RUNS_FOLDER = "runs"


@dataclass
class SweepResult:
    """What :func:`run_sweep` did."""

    total: int
    ran: int
    reused: int
    failed: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


def run_file(directory: Path, point: Point, seed: int) -> Path:
    return directory / RUNS_FOLDER / f"{point.key}-s{seed}.json"


def run_one(point: Point, seed: int, scenario_path: str) -> dict[str, Any]:
    """One run, in a worker process: the report, or the error a node raised."""
    from meshgpu.sim.report import run_scenario

    record: dict[str, Any] = {"point": point.index, "seed": seed, "values": dict(point.values)}
    try:
        report = run_scenario(build_scenario(point.document, seed, scenario_path))
    except MeshError as error:
        record.update(ok=False, error=f"{type(error).__name__}: {error}")
        return record
    record.update(ok=report.ok, report=report.as_dict())
    return record


def prepare_directory(spec: SweepSpec, directory: Path, resume: bool) -> dict[tuple[int, int], Any]:
    """Create or check the output directory; return this spec's runs already finished
    there, by (point index, seed), relabelled with the current grid's values."""
    runs_path = directory / RUNS_FOLDER
    finished: dict[tuple[int, int], Any] = {}
    for point in spec.points:
        for seed in spec.seeds:
            path = run_file(directory, point, seed)
            if not path.exists():
                continue
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a damaged file is simply run again
            record.update(point=point.index, values=dict(point.values), seed=seed)
            finished[(point.index, seed)] = record
    if finished and not resume:
        raise ConfigError(
            f"{directory} already holds {len(finished)} of this sweep's runs; pass "
            "--resume to reuse them and run the rest, or choose another --out"
        )
    runs_path.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        directory / STATE_FILE,
        json.dumps(
            {"name": spec.name, "source": spec.source, "fingerprint": spec.fingerprint}, indent=2
        )
        + "\n",
    )
    return finished


def run_sweep(
    spec: SweepSpec,
    directory: Path,
    jobs: int,
    resume: bool = False,
    progress: Callable[[int, int, Mapping[str, Any]], None] | None = None,
) -> SweepResult:
    """Run every (point, seed) not already finished in ``directory``; write the tables.

    ``progress(done, total, record)`` is called after each run is written. On
    KeyboardInterrupt the finished runs stay on disk (``resume=True`` continues)."""
    started = time.perf_counter()
    finished = prepare_directory(spec, directory, resume)
    pending = [
        (point, seed)
        for point in spec.points
        for seed in spec.seeds
        if (point.index, seed) not in finished
    ]
    result = SweepResult(total=spec.run_count, ran=0, reused=len(finished), failed=0)
    records: dict[tuple[int, int], Any] = dict(finished)

    def store(record: dict[str, Any]) -> None:
        point = spec.points[record["point"]]
        _write_atomic(run_file(directory, point, record["seed"]), json.dumps(record) + "\n")
        records[(record["point"], record["seed"])] = record
        result.ran += 1
        if progress is not None:
            progress(len(records), spec.run_count, record)

    if jobs <= 1 or len(pending) <= 1:
        for point, seed in pending:
            store(run_one(point, seed, spec.scenario_path))
    else:
        _run_in_workers(spec, pending, min(jobs, len(pending)), store)
    result.runs = [records[key] for key in sorted(records)]
    result.failed = sum(1 for record in result.runs if record.get("error"))
    write_tables(spec, directory, result.runs)
    result.wall_s = time.perf_counter() - started
    return result


def write_tables(spec: SweepSpec, directory: Path, runs: list[dict[str, Any]]) -> None:
    _write_atomic(directory / "runs.csv", runs_csv(spec, runs))
    _write_atomic(directory / "summary.csv", summary_csv(spec, runs))


def _run_in_workers(
    spec: SweepSpec,
    pending: list[tuple[Point, int]],
    jobs: int,
    store: Callable[[dict[str, Any]], None],
) -> None:
    tasks = [(point, seed, spec.scenario_path) for point, seed in pending]
    # Leaving the with block (normally, or on Ctrl-C in this process) terminates the
    # workers; they ignore SIGINT so that only the parent reports it. From their first
    # instruction: spawned while the parent ignores it, they inherit SIG_IGN through
    # exec. The initializer alone left the seconds a loaded machine takes to start
    # Python and import meshgpu, where a Ctrl-C printed each worker's 'Fatal Python
    # error: init_import_site' and 30 lines of traceback under the parent's message.
    with _interrupts_ignored():
        pool = get_context("spawn").Pool(jobs, initializer=_ignore_interrupt)
    with pool:
        for record in pool.imap_unordered(_run_task, tasks):
            store(record)


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored in this process meanwhile (when it is the main thread, the only one
    that may set handlers), so that the processes started meanwhile inherit it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_task(task: tuple[Point, int, str]) -> dict[str, Any]:
    return run_one(*task)


def _ignore_interrupt() -> None:
    """In a worker: Ctrl-C (sent to the whole process group) is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
