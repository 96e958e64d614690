"""Client-side numbers of a 3-daemon loopback mesh: per-task overhead, throughput, and
the leader's SIGKILL under load. Prints a table and one JSON object; asserts nothing.

    python bench/daemon.py [--tasks 200] [--sequential 60] [--json]
    python bench/daemon.py --fsync-only [--json]     # the disk's flush cost, by method
    python bench/daemon.py --keyed-vs-open [--rounds 2] [--json]  # encryption's cost
    python bench/daemon.py --broken-opencl [--rounds 2] [--json]  # fallback vs onnxruntime

* ``overhead``: one single-sample digits task at a time, submit to result, warm (the
  design's target: p50 under 2 ms on loopback), next to the local onnxruntime run: the
  default path (an idle entry node runs a tiny task at once, daemon/direct.py) and the
  replicated table's (``direct=False``), in alternating blocks;
* ``throughput``: ``Client.map`` over ``--tasks`` single-sample tasks (window 64; the
  test set's 450 samples repeated past 450), with the CPU time
  per task of each daemon process and of this (client) process, idle cost removed: the
  figure to judge a change by on a shared machine, where wall times swing with the load;
* ``leader_kill``: the leader SIGKILLed a third of the way through a ``map``: the longest
  gap between two consecutive results (how long work stalled), the time until the
  client's peer declared the victim dead and named a new leader, and tasks lost.

``--keyed-vs-open`` instead compares two meshes in turns (A B B A, ``--rounds`` times):
an open one and one with a mesh key (every datagram and frame encrypted, auth/), the
``overhead`` and ``throughput`` figures of each and the ratios keyed / open. Both meshes
have the same node names: each view's leader is a hash of the names (core/leader.py), and
a leader that is also the client's entry node saves datagrams, so meshes named apart
differ whatever their keys (``bench-open-*`` and ``bench-keyed-*``: 1.56 and 2.11
datagrams per task, the CPU per task following).

``--broken-opencl`` instead compares two meshes in turns (A B B A): ``--backend
onnxruntime``, and ``--backend auto`` with every OpenCL device broken
(``POCL_EXTRA_BUILD_FLAGS=-cl-std=CL9.9``: each daemon probes, finds no usable device and
runs every model on its onnxruntime fallback). ``overhead`` and ``throughput`` of each,
``executor``: the worker's own per-run path (``Executor.run`` of one sample, in a child
process started like a daemon of that kind), and the ratios broken / onnxruntime.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio

from meshgpu import inference
from meshgpu.client import AsyncClient, Client
from meshgpu.client.localmesh import LocalMesh
from meshgpu.inference.model import SHIPPED_MODELS_DIR


def client_environ() -> dict[str, str]:
    """The clients' environment: only the mesh key, when this turn's mesh has one."""
    key = os.environ.get("MESHGPU_KEY")
    return {"MESHGPU_KEY": key} if key else {}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def overhead(peer: str, pixels: np.ndarray, count: int) -> dict[str, float]:
    """Submit to result, one task at a time: the default path (an idle entry node runs a
    tiny task at once, daemon/direct.py) and the replicated table's (``direct=False``),
    in alternating blocks, next to the local run."""
    session = inference.load("digits", backend="onnxruntime")
    local = []
    for row in pixels[:count]:
        started = time.perf_counter()
        session.run({"pixels": row[None]})
        local.append(time.perf_counter() - started)
    default: list[float] = []
    table: list[float] = []
    direct_runs = 0
    with Client(peer, environ=client_environ()) as client:
        # Warm: the model is uploaded, and the entry node has run it once (a table task
        # assigned to another node does not load it there).
        for row in pixels[:40]:
            handle = client.submit("digits", {"pixels": row[None]})
            handle.result(60)
            if handle.copies == 0:
                break
        # In blocks, two rounds: one task at a time taking turns would measure each
        # direct run while the entry node still handles the table task before it
        # (replication, the collected mark), which is not the idle case it is for.
        half = max(1, count // 2)
        for _ in range(2):
            for row in pixels[:half]:
                started = time.perf_counter()
                handle = client.submit("digits", {"pixels": row[None]})
                handle.result(60)
                default.append(time.perf_counter() - started)
                direct_runs += handle.copies == 0
            for row in pixels[:half]:
                started = time.perf_counter()
                client.submit("digits", {"pixels": row[None]}, direct=False).result(60)
                table.append(time.perf_counter() - started)
            time.sleep(0.5)  # the table tasks' aftermath settles before the next block
    local_p50 = statistics.median(local)
    return {
        "local_p50_ms": local_p50 * 1e3,
        "mesh_p50_ms": statistics.median(default) * 1e3,
        "mesh_p90_ms": percentile(default, 0.9) * 1e3,
        "overhead_p50_ms": (statistics.median(default) - local_p50) * 1e3,
        "direct_fraction": direct_runs / len(default),
        "table_p50_ms": statistics.median(table) * 1e3,
        "table_p90_ms": percentile(table, 0.9) * 1e3,
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def throughput(mesh: LocalMesh, pixels: np.ndarray, count: int) -> dict[str, Any]:
    pids = [node.process.pid for node in mesh.nodes if node.process is not None]
    with Client(mesh.nodes[1].peer, environ=client_environ()) as client:
        sum(1 for _ in client.map("digits", ({"pixels": r[None]} for r in pixels[:10])))
        idle_from = [process_cpu_s(pid) for pid in pids]
        time.sleep(2.0)
        idle = [(process_cpu_s(pid) - was) / 2.0 for pid, was in zip(pids, idle_from, strict=True)]
        before, client_before = [process_cpu_s(pid) for pid in pids], own_cpu_s()
        started = time.perf_counter()
        # The test set's samples over again up to ``count`` (it holds 450): a longer
        # window makes the idle rate removed below a smaller part of the figure.
        samples = itertools.islice(itertools.cycle(pixels), count)
        done = sum(1 for _ in client.map("digits", ({"pixels": r[None]} for r in samples)))
        elapsed = time.perf_counter() - started
        after, client_after = [process_cpu_s(pid) for pid in pids], own_cpu_s()
    daemons_ms = [
        (end - start - rate * elapsed) / done * 1e3
        for start, end, rate in zip(before, after, idle, strict=True)
    ]
    client_ms = (client_after - client_before) / done * 1e3
    return {
        "tasks": done,
        "seconds": elapsed,
        "tasks_per_s": done / elapsed,
        "cpu_ms_per_task_daemons": [round(ms, 2) for ms in daemons_ms],
        "cpu_ms_per_task_client": round(client_ms, 2),
        "cpu_ms_per_task_total": round(sum(daemons_ms) + client_ms, 2),
        "loadavg_1m": os.getloadavg()[0],
    }


def fsync_kinds(directory: Path, count: int = 200) -> dict[str, dict[str, float]]:
    """p50/p90 ms of making one 600-byte append durable, by method, on ``directory``'s
    filesystem (why the journal counts fsyncs rather than choosing a kind of them)."""
    data = b"x" * 600

    def timed(step: Any) -> dict[str, float]:
        times = []
        for index in range(count):
            started = time.perf_counter()
            step(index)
            times.append((time.perf_counter() - started) * 1e3)
        return {"p50_ms": percentile(times, 0.5), "p90_ms": percentile(times, 0.9)}

    def opened(name: str, flags: int) -> int:
        return os.open(directory / name, flags | os.O_CREAT | os.O_TRUNC, 0o600)

    results = {}
    log = opened("append.log", os.O_WRONLY | os.O_APPEND)
    results["append+fsync"] = timed(lambda i: (os.write(log, data), os.fsync(log)))
    results["append+fdatasync"] = timed(lambda i: (os.write(log, data), os.fdatasync(log)))
    for name, prepare in (
        ("pwrite+fdatasync, fallocated", lambda fd: os.posix_fallocate(fd, 0, 1 << 24)),
        ("pwrite+fdatasync, zero-filled", lambda fd: os.write(fd, bytes(1 << 23))),
    ):
        segment = opened(name.split(", ")[1] + ".log", os.O_RDWR)
        prepare(segment)
        os.fsync(segment)
        results[name] = timed(
            lambda i, fd=segment: (os.pwrite(fd, data, i * len(data)), os.fdatasync(fd))
        )
        os.close(segment)
    os.close(log)

    def new_file(index: int) -> None:
        scratch = directory / f"payload-{index}.tmp"
        with open(scratch, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, directory / f"payload-{index}")

    results["new file+fsync+rename"] = timed(new_file)
    return results


async def leader_kill(mesh: LocalMesh, pixels: np.ndarray, count: int) -> dict[str, float | int]:
    async with AsyncClient(
        mesh.nodes[0].peer, environ=client_environ(), status_interval=0.5
    ) as probe:
        leader_name = (await probe.status())["leader"]
    leader = next(n for n in mesh.nodes if n.name == leader_name)
    entry = next(n for n in mesh.nodes if n is not leader)
    times: list[float] = []
    killed_at = 0.0
    declared = [float("nan")]

    async def watch(client: AsyncClient) -> None:
        """Until the victim is dead and a live leader named (woken by changes)."""
        generation = -1
        while True:
            status = await client.call("wait", after_generation=generation, timeout=30)
            generation = status["generation"]
            states = {m["node_id"]: m["state"] for m in status["members"]}
            if states[leader.name] == "dead" and status["leader"] not in (None, leader.name):
                declared[0] = time.monotonic() - killed_at
                return

    async with (
        AsyncClient(entry.peer, environ=client_environ(), status_interval=0.5) as client,
        trio.open_nursery() as nursery,
    ):
        inputs = ({"pixels": r[None]} for r in pixels[:count])
        async for _ in client.map("digits", inputs, raise_errors=False):
            times.append(time.monotonic())
            if len(times) == count // 3:
                leader.kill()
                killed_at = time.monotonic()
                nursery.start_soon(watch, client)
    after = [t for t in times if t >= killed_at]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "killed": leader.name,
        "declared_dead_new_leader_s": declared[0],
        "first_result_after_kill_s": (after[0] - killed_at) if after else float("nan"),
        "longest_gap_s": max(gaps) if gaps else 0.0,
        "lost": count - len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--sequential", type=int, default=60)
    parser.add_argument("--json", action="store_true", help="only the JSON object")
    parser.add_argument("--fsync-only", action="store_true", help="only the disk's flush cost")
    parser.add_argument(
        "--broken-opencl",
        action="store_true",
        help="the fallback path (every OpenCL device broken, --backend auto) vs onnxruntime",
    )
    parser.add_argument("--rounds", type=int, default=1, help="A B B A turns (--broken-opencl)")
    parser.add_argument(
        "--keyed-vs-open", action="store_true", help="an encrypted mesh vs an open one"
    )
    parser.add_argument("--executor-run", help=argparse.SUPPRESS)  # the child of --broken-opencl
    args = parser.parse_args()
    if args.executor_run:
        print(json.dumps(executor_run_us(args.executor_run)))
        return
    if args.broken_opencl:
        report_fallback = broken_opencl(args.tasks, args.sequential, args.rounds)
        if not args.json:
            for name, value in report_fallback["ratio_broken_to_onnxruntime"].items():
                print(f"broken/onnxruntime {name:26} {value:.3f}", file=sys.stderr)
        print(json.dumps(report_fallback))
        return
    if args.keyed_vs_open:
        report_keyed = keyed_vs_open(args.tasks, args.sequential, args.rounds)
        if not args.json:
            for name, value in report_keyed["ratio_keyed_to_open"].items():
                print(f"keyed/open {name:26} {value:.3f}", file=sys.stderr)
        print(json.dumps(report_keyed))
        return
    if args.fsync_only:
        with tempfile.TemporaryDirectory(prefix="meshgpu-fsync-", dir=Path.cwd()) as scratch:
            report_fsync = {"fsync": fsync_kinds(Path(scratch))}
        if not args.json:
            for name, figures in report_fsync["fsync"].items():
                print(f"{name:32} p50 {figures['p50_ms']:.2f} ms  p90 {figures['p90_ms']:.2f} ms")
        print(json.dumps(report_fsync))
        return
    pixels = np.load(SHIPPED_MODELS_DIR / "digits_test.npz")["pixels"]
    with (
        tempfile.TemporaryDirectory(prefix="meshgpu-bench-") as root,
        LocalMesh(Path(root), 3, prefix="bench") as mesh,
    ):
        trio.run(_formed, mesh)
        report = {
            "overhead": overhead(mesh.nodes[0].peer, pixels, args.sequential),
            "throughput": throughput(mesh, pixels, args.tasks),
            "leader_kill": trio.run(leader_kill, mesh, pixels, args.tasks),
        }
    if not args.json:
        for section, values in report.items():
            for name, value in values.items():
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                print(f"{section:12} {name:28} {shown}", file=sys.stderr)
    print(json.dumps(report))


KEYED_FIGURES = (
    ("overhead", "mesh_p50_ms"),
    ("overhead", "table_p50_ms"),
    ("throughput", "cpu_ms_per_task_total"),
    ("throughput", "tasks_per_s"),
)


def a_b_b_a(
    kinds: tuple[str, str],
    rounds: int,
    turn: Callable[[str, int], dict[str, Any]],
    figures: tuple[tuple[str, str], ...],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, float]], dict[str, float]]:
    """Run ``turn(kind, index)`` in A B B A order, ``rounds`` times (a drift of the
    machine's load over the run weighs on both kinds alike); returns the runs per kind,
    the medians of ``figures`` (section, name) per kind, and their ratios B / A."""
    first, second = kinds
    runs: dict[str, list[dict[str, Any]]] = {first: [], second: []}
    for index, kind in enumerate((first, second, second, first) * rounds):
        runs[kind].append(turn(kind, index))
        print(f"{kind:14} {runs[kind][-1]}", file=sys.stderr)
    medians = {
        kind: {
            f"{section}.{name}": statistics.median(run[section][name] for run in kind_runs)
            for section, name in figures
        }
        for kind, kind_runs in runs.items()
    }
    ratios = {key: medians[second][key] / medians[first][key] for key in medians[first]}
    return runs, medians, ratios


def keyed_vs_open(tasks: int, sequential: int, rounds: int) -> dict[str, Any]:
    """``overhead`` and ``throughput`` of an open mesh and an encrypted one, in A B B A
    turns, and the ratios of their medians (keyed / open)."""
    from meshgpu.daemon.auth import MeshKey

    pixels = np.load(SHIPPED_MODELS_DIR / "digits_test.npz")["pixels"]
    key = MeshKey.generate().secret.hex()

    def turn(kind: str, index: int) -> dict[str, Any]:
        if kind == "keyed":
            os.environ["MESHGPU_KEY"] = key  # the daemons' and the clients' key
        else:
            os.environ.pop("MESHGPU_KEY", None)
        with (
            tempfile.TemporaryDirectory(prefix="meshgpu-bench-") as root,
            # One set of node names for both kinds (placement follows names: docstring).
            LocalMesh(Path(root), 3, prefix="bench") as mesh,
        ):
            trio.run(_formed, mesh)
            return {
                "overhead": overhead(mesh.nodes[0].peer, pixels, sequential),
                "throughput": throughput(mesh, pixels, tasks),
            }

    try:
        runs, medians, ratios = a_b_b_a(("open", "keyed"), rounds, turn, KEYED_FIGURES)
    finally:
        os.environ.pop("MESHGPU_KEY", None)
    return {"runs": runs, "medians": medians, "ratio_keyed_to_open": ratios}


BROKEN_OPENCL = {"POCL_EXTRA_BUILD_FLAGS": "-cl-std=CL9.9"}
FALLBACK_FIGURES = (
    ("overhead", "mesh_p50_ms"),
    ("overhead", "table_p50_ms"),
    ("throughput", "cpu_ms_per_task_total"),
    ("throughput", "tasks_per_s"),
    ("executor", "run_us"),
)


def executor_run_us(backend: str, runs: int = 400, blocks: int = 5) -> list[float]:
    """Microseconds per ``Executor.run`` of one digits sample in this process (after the
    daemon's start-up work: imports, warm-up, device probes), per block of ``runs``: the
    worker's own per-task path, without the mesh around it."""
    import hashlib

    from meshgpu.daemon.execution import Executor
    from meshgpu.daemon.warmup import preload_inference

    preload_inference(backend)
    path = SHIPPED_MODELS_DIR / "digits.onnx"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    pixels = np.load(SHIPPED_MODELS_DIR / "digits_test.npz")["pixels"]

    async def timed() -> list[float]:
        executor = Executor(2, backend=backend)
        for row in pixels[:50]:
            await executor.run(digest, path, {"pixels": row[None]})
        per_block = []
        for _ in range(blocks):
            started = time.perf_counter()
            for row in pixels[:runs]:
                await executor.run(digest, path, {"pixels": row[None]})
            per_block.append((time.perf_counter() - started) / runs * 1e6)
        return per_block

    return trio.run(timed)


def _executor_in_child(backend: str) -> list[float]:
    import subprocess

    child = subprocess.run(
        [sys.executable, __file__, "--executor-run", backend],
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(value) for value in json.loads(child.stdout)]


def broken_opencl(tasks: int, sequential: int, rounds: int) -> dict[str, Any]:
    """``overhead`` and ``throughput`` of an onnxruntime mesh and of a mesh whose OpenCL
    devices are all broken, in turns A B B A (``rounds`` times); medians per kind and
    their ratios."""
    pixels = np.load(SHIPPED_MODELS_DIR / "digits_test.npz")["pixels"]
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="meshgpu-bench-") as root:
        os.environ["MESHGPU_CACHE_DIR"] = str(Path(root) / "cache")

        def turn(kind: str, index: int) -> dict[str, Any]:
            if kind == "broken_opencl":
                os.environ.update(BROKEN_OPENCL)
            else:
                for name in BROKEN_OPENCL:
                    os.environ.pop(name, None)
            backend = "auto" if kind == "broken_opencl" else "onnxruntime"
            with LocalMesh(
                Path(root) / f"turn-{index}", 3, prefix="bench", backend=backend
            ) as mesh:
                trio.run(_formed, mesh)
                run = {
                    "overhead": overhead(mesh.nodes[0].peer, pixels, sequential),
                    "throughput": throughput(mesh, pixels, tasks),
                }
            run["executor"] = {"run_us": statistics.median(_executor_in_child(backend))}
            return run

        try:
            runs, medians, ratios = a_b_b_a(
                ("onnxruntime", "broken_opencl"), rounds, turn, FALLBACK_FIGURES
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return {"runs": runs, "medians": medians, "ratio_broken_to_onnxruntime": ratios}


async def _formed(mesh: LocalMesh) -> None:
    async with AsyncClient(mesh.nodes[0].peer, environ=client_environ()) as client:
        await client.call("wait", alive=len(mesh.nodes), timeout=60)


if __name__ == "__main__":
    main()
