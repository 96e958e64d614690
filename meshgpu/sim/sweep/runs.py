"""Running a sweep: every (point, seed) once, in worker processes, each result on disk
the moment it is finished.

The output directory holds ``sweep.json`` (the spec's name and fingerprint), one
``runs/pNNNN-sSEED.json`` per finished run (the full ``--json`` report, written to a
temporary name and renamed, so a file that exists is complete), then ``runs.csv`` and
``summary.csv`` built from those files alone. An interrupted sweep therefore resumes
(``resume=True``) by skipping the runs whose files exist; a directory started by a
different spec (other points, seeds or metrics) is refused rather than mixed.

Workers are separate processes (``spawn``: nothing of the parent's threads or state is
inherited), each running whole scenarios; a run is deterministic in its seed, so the
number of workers and the order they finish in change nothing in the tables.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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
    return directory / RUNS_FOLDER / f"p{point.index:04d}-s{seed}.json"


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
    """Create or check the output directory; return the runs already finished there."""
    state_path = directory / STATE_FILE
    runs_path = directory / RUNS_FOLDER
    finished: dict[tuple[int, int], Any] = {}
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"{state_path} is unreadable ({error}); choose another --out"
            ) from error
        if state.get("fingerprint") != spec.fingerprint:
            raise ConfigError(
                f"{directory} holds a different sweep ({state.get('name')!r}: other points, "
                "seeds or metrics); choose another --out"
            )
        for path in sorted(runs_path.glob("p*-s*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a damaged file is simply run again
            finished[(record["point"], record["seed"])] = record
        if finished and not resume:
            raise ConfigError(
                f"{directory} already holds {len(finished)} of this sweep's runs; pass "
                "--resume to finish it, or choose another --out"
            )
    runs_path.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        state_path,
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
    queue = list(reversed(pending))
    executor = ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=_quiet_interrupt
    )
    running: set[Future[dict[str, Any]]] = set()
    try:
        while queue or running:
            while queue and len(running) < jobs:
                point, seed = queue.pop()
                running.add(executor.submit(run_one, point, seed, spec.scenario_path))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                store(future.result())
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def _quiet_interrupt() -> None:
    """In a worker: Ctrl-C (sent to the whole process group) ends it without a traceback;
    the parent reports the interruption and what is saved."""
    signal.signal(signal.SIGINT, lambda number, frame: os._exit(130))


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
