"""Moving work: a 3-node meshgpu loopback mesh beside a Dask distributed LocalCluster of
3 worker processes (1 thread each), the same workloads, in one run, taking turns.

    python bench/dispatch.py [--quick] [--json] [--rounds 1] [--group N] [--window W]

* ``noop``: N tasks of Identity on a float32 [1, 16] tensor (onnxruntime on both sides),
  submitted in bulk (meshgpu ``Client.map``; Dask ``client.map`` + ``gather``):
  tasks per second;
* ``rtt``: M sequential round trips of the same task (submit, wait for the result):
  p50 / p99 latency;
* ``ms1``: K tasks of a ~1 ms model (two 256x256 MatMul+Relu on [16, 256]), in bulk:
  tasks per second, and efficiency = that throughput / a plain loop's in one process;
* ``concurrent``: ``--callers`` (64) threads sharing one client, each submitting one noop
  task and waiting for its result in a loop (no ``map``: meshgpu ``submit().result()``,
  Dask ``client.submit(...).result()``) for ``--concurrent-s`` seconds: tasks per second
  and p50 / p99 latency (the entry node coalesces the concurrent submissions,
  docs/task-queue.md).

Both systems run the model through ``meshgpu.inference.load(..., backend="onnxruntime")``
(the Dask workers cache one session per model). Each phase is bounded in count and in
time (``--phase-timeout``): what finished by then is what is reported. The meshgpu
daemons run ``--slots 1`` so both sides have three single-threaded executors. Ratio =
meshgpu / dask (throughput: higher is better; latency: lower is better). Dask is a
benchmark extra (``pip install -e .[bench]``), not a dependency of meshgpu.

The meshgpu side runs the bulk phases with task groups (docs/task-queue.md): ``--group N``
forces N members per group, by default ``map`` chooses, with a window of ``--window``
tasks (1024: a group's cycle, submission to collection, is a few hundred ms, so the
window bounds throughput; Dask has every task in flight at once). Unless ``--group 1``,
a second meshgpu side, ``meshgpu_ungrouped``, runs the same bulk phases ungrouped with
the window of 64 used before groups existed, in the same run, so the table shows
grouped, ungrouped and Dask side by side. Round trips are single submissions (no group)
and are measured on the first meshgpu side only.

``--keyed`` adds a second meshgpu mesh started with a mesh key (every datagram and frame
encrypted, meshgpu/daemon/auth/), side ``meshgpu_keyed``, grouped as the first side and
taking its turns with the others; the report adds the ratios keyed / open.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from loopback import (
    conditions,
    exit_on_sigterm,
    identity_model,
    matmul_model,
    percentile,
    show_table,
    wait_formed,
)

from meshgpu import inference
from meshgpu.client import Client
from meshgpu.client.localmesh import LocalMesh
from meshgpu.daemon.auth import MeshKey

NODES = 3
PHASES = ("noop", "rtt", "ms1", "concurrent")
SINGLE_PHASES = ("rtt", "concurrent")
"""Phases of single submissions (no ``map``): the ungrouped side would repeat them."""


def run_on_worker(model_path: str, x: np.ndarray) -> np.ndarray:
    """The Dask task: the model's output for ``x``, with one cached session per worker."""
    from distributed import get_worker

    from meshgpu import inference as engine

    worker = get_worker()
    sessions = worker.__dict__.setdefault("_bench_sessions", {})
    if model_path not in sessions:
        sessions[model_path] = engine.load(Path(model_path), backend="onnxruntime")
    return sessions[model_path].run({"x": x})["y"]


class MeshSide:
    """A meshgpu side: one client on the first daemon, mapping with ``group`` members per
    task group (None: ``map`` chooses; 1: ungrouped) and at most ``window`` in flight."""

    def __init__(
        self,
        mesh: LocalMesh,
        models: dict[str, Path],
        *,
        name: str = "meshgpu",
        group: int | None = None,
        window: int = 64,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.group = group
        self.window = window
        self.client = Client(mesh.nodes[0].peer, environ=environ or {})
        self.models = {key: path.read_bytes() for key, path in models.items()}

    def bulk(self, model: str, inputs: list[np.ndarray], deadline: float) -> int:
        def until_deadline() -> Any:
            for x in inputs:
                if time.monotonic() > deadline:
                    return
                yield {"x": x}

        items = self.client.map(
            self.models[model], until_deadline(), window=self.window, group=self.group
        )
        return sum(1 for _ in items)

    def one(self, model: str, x: np.ndarray) -> None:
        self.client.submit(self.models[model], {"x": x}).result(60)

    def close(self) -> None:
        self.client.close()


class DaskSide:
    """The Dask side: a LocalCluster of NODES processes, one thread each, on 127.0.0.1."""

    name = "dask"

    def __init__(self, models: dict[str, Path]) -> None:
        from distributed import Client as DaskClient
        from distributed import LocalCluster

        self.cluster = LocalCluster(
            n_workers=NODES,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        )
        self.client = DaskClient(self.cluster)
        self.models = {key: str(path) for key, path in models.items()}

    def bulk(self, model: str, inputs: list[np.ndarray], deadline: float) -> int:
        from distributed import wait

        futures = self.client.map(
            run_on_worker, [self.models[model]] * len(inputs), inputs, pure=False
        )
        done, _ = wait(
            futures, timeout=max(1.0, deadline - time.monotonic()), return_when="ALL_COMPLETED"
        )
        finished = sum(1 for f in done if f.status == "finished")
        self.client.cancel(futures)
        return finished

    def one(self, model: str, x: np.ndarray) -> None:
        self.client.submit(run_on_worker, self.models[model], x, pure=False).result(60)

    def close(self) -> None:
        """Close the client and the cluster; on a loaded machine the nannies can miss
        Dask's shutdown timeout, so that error is swallowed and the workers terminated."""
        try:
            self.client.close(timeout=30)
            self.cluster.close(timeout=30)
        except Exception as error:  # distributed raises bare TimeoutError/OSError here
            print(f"dask shutdown: {type(error).__name__}: {error}", file=sys.stderr)
        for process in multiprocessing.active_children():
            process.terminate()
            process.join(10)


def throughput(side: Any, model: str, inputs: list[np.ndarray], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    done = side.bulk(model, inputs, time.monotonic() + timeout)
    seconds = time.perf_counter() - started
    return {"tasks": done, "seconds": round(seconds, 3), "tps": done / seconds}


def round_trips(side: Any, model: str, inputs: list[np.ndarray], timeout: float) -> dict[str, Any]:
    side.one(model, inputs[0])  # warm: model uploaded / session built
    deadline = time.monotonic() + timeout
    times = []
    for x in inputs:
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        side.one(model, x)
        times.append(time.perf_counter() - started)
    return {
        "count": len(times),
        "p50_ms": percentile(times, 0.5) * 1e3,
        "p99_ms": percentile(times, 0.99) * 1e3,
    }


def concurrent(
    side: Any, model: str, inputs: list[np.ndarray], callers: int, seconds: float
) -> dict[str, Any]:
    """``callers`` threads each submitting one task and waiting for it, in a loop, for
    ``seconds``: completions per second and the latency of each round trip."""
    side.one(model, inputs[0])  # warm
    latencies: list[list[float]] = [[] for _ in range(callers)]
    errors: list[str] = []
    stop = time.monotonic() + seconds
    start = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start.wait()
        mine = latencies[index]
        position = index
        while time.monotonic() < stop:
            x = inputs[position % len(inputs)]
            position += callers
            began = time.perf_counter()
            try:
                side.one(model, x)
            except Exception as error:  # counted and shown: a benchmark reports, never hides
                errors.append(f"{type(error).__name__}: {error}")
                continue
            mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = time.perf_counter() - began
    times = [t for mine in latencies for t in mine]
    return {
        "tasks": len(times),
        "seconds": round(elapsed, 3),
        "tps": len(times) / elapsed,
        "p50_ms": percentile(times, 0.5) * 1e3 if times else float("nan"),
        "p99_ms": percentile(times, 0.99) * 1e3 if times else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def local_loop(model: Path, inputs: list[np.ndarray]) -> float:
    """Tasks per second of the model in a plain loop in this process."""
    session = inference.load(model, backend="onnxruntime")
    for x in inputs[:20]:
        session.run({"x": x})
    started = time.perf_counter()
    for x in inputs:
        session.run({"x": x})
    return len(inputs) / (time.perf_counter() - started)


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    models = {"noop": root / "noop.onnx", "ms1": root / "ms1.onnx"}
    models["noop"].write_bytes(identity_model())
    models["ms1"].write_bytes(matmul_model(2))
    rng = np.random.default_rng(1)
    small = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(args.noop)]
    wide = [rng.standard_normal((16, 256)).astype(np.float32) for _ in range(args.ms1)]
    report: dict[str, Any] = {"meshgpu": {}, "dask": {}, "conditions": [conditions()]}
    report["meshgpu_group"] = "auto" if args.group is None else args.group
    report["meshgpu_window"] = args.window if args.group != 1 else 64
    loop_tps = local_loop(models["ms1"], wide[: min(len(wide), 500)])
    with contextlib.ExitStack() as stack:
        mesh = stack.enter_context(LocalMesh(root / "mesh", NODES, prefix="dispatch", slots=1))
        wait_formed(mesh)
        sides: list[Any] = [
            MeshSide(mesh, models, group=args.group, window=report["meshgpu_window"])
        ]
        if args.keyed:
            key = {"MESHGPU_KEY": MeshKey.generate().secret.hex()}
            os.environ.update(key)  # the keyed daemons' environment
            try:
                # The open mesh's node names: each view's leader is a hash of the
                # names (core/leader.py), and other names would place work otherwise.
                keyed = stack.enter_context(
                    LocalMesh(root / "keyed", NODES, prefix="dispatch", slots=1)
                )
            finally:
                os.environ.pop("MESHGPU_KEY")
            wait_formed(keyed, key)
            report["meshgpu_keyed"] = {}
            sides.append(
                MeshSide(
                    keyed,
                    models,
                    name="meshgpu_keyed",
                    group=args.group,
                    window=report["meshgpu_window"],
                    environ=key,
                )
            )
        if args.group != 1:
            report["meshgpu_ungrouped"] = {}
            sides.append(MeshSide(mesh, models, name="meshgpu_ungrouped", group=1, window=64))
        sides.append(DaskSide(models))
        try:
            for side in sides:  # warm both: models delivered, sessions built everywhere
                side.bulk("noop", small[:30], time.monotonic() + 120)
                side.bulk("ms1", wide[:30], time.monotonic() + 120)
            phases: list[tuple[str, Callable[[Any], dict[str, Any]]]] = [
                ("noop", lambda s: throughput(s, "noop", small, args.phase_timeout)),
                ("rtt", lambda s: round_trips(s, "noop", small[: args.rtt], args.phase_timeout)),
                ("ms1", lambda s: throughput(s, "ms1", wide, args.phase_timeout)),
                (
                    "concurrent",
                    lambda s: concurrent(s, "noop", small, args.callers, args.concurrent_s),
                ),
            ]
            phases = [(name, run) for name, run in phases if name in args.phases]
            for round_index in range(args.rounds):
                for phase, run in phases:
                    order = sides if round_index % 2 == 0 else sides[::-1]
                    for side in order:  # alternating: each phase on all, then the next
                        if phase in SINGLE_PHASES and side.name == "meshgpu_ungrouped":
                            continue  # single submissions: the same as the first side
                        result = run(side)
                        result["loadavg_1m"] = conditions()["loadavg"][0]
                        report[side.name].setdefault(phase, []).append(result)
                        print(f"{side.name:8} {phase:5} {result}", file=sys.stderr)
        finally:
            for side in sides:
                side.close()
    report["conditions"].append(conditions())
    for name in ("meshgpu", "meshgpu_ungrouped", "meshgpu_keyed", "dask"):
        if name not in report or "ms1" not in report[name]:
            continue
        for entry in report[name]["ms1"]:
            entry["efficiency_vs_loop"] = entry["tps"] / loop_tps
    report["local_loop_ms1_tps"] = loop_tps
    ratios = {
        "noop_tps": ("noop", "tps"),
        "rtt_p50": ("rtt", "p50_ms"),
        "ms1_tps": ("ms1", "tps"),
        "concurrent_tps": ("concurrent", "tps"),
        "concurrent_p50": ("concurrent", "p50_ms"),
        "concurrent_p99": ("concurrent", "p99_ms"),
    }
    ran = [(k, p, f) for k, (p, f) in ratios.items() if p in report["meshgpu"]]
    report["ratio"] = {
        key: _median(report, phase, figure) / _median(report, phase, figure, "dask")
        for key, phase, figure in ran
    }
    if "meshgpu_keyed" in report:
        report["ratio_keyed_to_open"] = {
            key: _median(report, phase, figure, "meshgpu_keyed") / _median(report, phase, figure)
            for key, phase, figure in ran
        }
    if "meshgpu_ungrouped" in report:
        for phase in ("noop", "ms1"):
            if phase in report["meshgpu_ungrouped"]:
                report["ratio"][f"{phase}_tps_ungrouped"] = _median(
                    report, phase, "tps", "meshgpu_ungrouped"
                ) / _median(report, phase, "tps", "dask")
    return report


def _median(report: dict[str, Any], phase: str, key: str, side: str = "meshgpu") -> float:
    """The median over rounds of one figure."""
    return float(np.median([entry[key] for entry in report[side][phase]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 / 100 / 300 tasks")
    parser.add_argument("--json", action="store_true", help="end with the JSON object")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (median)")
    parser.add_argument("--phase-timeout", type=float, default=300.0, help="seconds per phase")
    parser.add_argument(
        "--group", type=int, default=None, help="members per task group (default: map chooses)"
    )
    parser.add_argument("--window", type=int, default=1024, help="grouped side's map window")
    parser.add_argument("--keyed", action="store_true", help="add an encrypted meshgpu mesh")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}"
    )
    parser.add_argument("--callers", type=int, default=64, help="threads of phase concurrent")
    parser.add_argument(
        "--concurrent-s", type=float, default=30.0, help="seconds of phase concurrent"
    )
    args = parser.parse_args()
    args.phases = [p for p in args.phases.split(",") if p]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    exit_on_sigterm()
    args.noop, args.rtt, args.ms1 = (500, 100, 300) if args.quick else (5000, 500, 2000)
    with tempfile.TemporaryDirectory(prefix="meshgpu-dispatch-") as root:
        report = measure(args, Path(root))
    grouped = "meshgpu_ungrouped" in report
    rows = []
    for phase, key, unit in (
        ("noop", "tps", "tasks/s"),
        ("rtt", "p50_ms", "ms"),
        ("rtt", "p99_ms", "ms"),
        ("ms1", "tps", "tasks/s"),
        ("ms1", "efficiency_vs_loop", "fraction"),
        ("concurrent", "tps", "tasks/s"),
        ("concurrent", "p50_ms", "ms"),
        ("concurrent", "p99_ms", "ms"),
    ):
        if phase not in args.phases:
            continue
        mesh, dask = _median(report, phase, key), _median(report, phase, key, "dask")
        row: list[Any] = [f"{phase} {key} ({unit})", mesh]
        if grouped:
            single = phase in SINGLE_PHASES
            plain = mesh if single else _median(report, phase, key, "meshgpu_ungrouped")
            row.append(plain)
        rows.append((*row, dask, mesh / dask))
    group = report["meshgpu_group"]
    columns = ["figure", f"meshgpu (group {group}, window {report['meshgpu_window']})"]
    if grouped:
        columns.append("meshgpu ungrouped (window 64)")
    show_table(
        f"dispatch, {NODES} nodes, loadavg {report['conditions'][0]['loadavg']}",
        [*columns, "dask", "meshgpu/dask"],
        rows,
    )
    for figure, ratio in report.get("ratio_keyed_to_open", {}).items():
        print(f"keyed/open {figure:10} {ratio:.3f}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
