"""A 1 GiB input and a 1 GiB result through a 3-daemon loopback mesh: bytes correct,
each process's peak RSS against the tensor, and MB/s end to end. Prints a table and one
JSON object; asserts nothing.

    python bench/bigtensor.py [--mib 1024] [--json] [--baseline DIR [--rounds N]]

Two scenarios, each with its own client process (so that its peak RSS is its own):

* ``input``: a ``[N, 1024]`` float32 input of ``--mib`` MiB, reduced by the model to a
  ``[N]`` sum (a small result): the input travels client -> entry node -> second holder
  -> worker in ranges;
* ``result``: a ``[1, 1024]`` input tiled by the model to ``[N, 1024]`` (a result of
  ``--mib`` MiB, every row checked): worker -> holders -> entry node -> client.

Per process, ``idle`` is its resident set once warm (the model loaded by a small task of
the same kind) and ``peak`` its high-water mark during the scenario (VmHWM, reset through
``/proc/PID/clear_refs`` before it; the client's is its whole run). The target is
``peak < idle + 1.5 x tensor``: one copy of the tensor and the ranges in flight. MB/s is
the tensor's bytes over the client's submit-to-result time (``submit_s`` in the JSON: the
part until the submit returned, the upload and its copies acknowledged); CPU s is each
process's CPU time during the scenario, the figure that holds on a shared machine, where
wall times swing with the load: compare numbers with each other, not across runs.

``--baseline DIR`` runs the same scenarios with the meshgpu of another checkout (``DIR``
on ``PYTHONPATH`` for the daemons and the client: e.g. ``git archive main | tar -x -C
DIR``), alternating with this one ``--rounds`` times, and prints the medians side by
side with their ratio: the comparison that holds on a machine shared with other work.

``--profile DIR`` samples every process of a scenario with py-spy (``pip install
py-spy``) from the end of the warm-up to the client's exit, 100 times a second, into
``DIR/<scenario>-<process>.txt`` (py-spy's raw collapsed stacks, with line numbers), and
prints each process's top functions by samples, self and total: the per-stage profile.
A sample is a stack of a thread that was not idle: time in a write the kernel throttles
counts, and so does waiting for a core on a loaded machine. ``--scenarios input`` runs
one of the two.

``--perf DIR`` records every process of a scenario with ``perf record -g`` (kernel and
native stacks of every thread, 499 Hz) into ``DIR/<scenario>-<process>.data`` and counts
its page faults and socket, ``madvise`` and write calls with ``perf stat`` into
``<scenario>-<process>.stat``: where the system CPU goes (page faults, socket copies,
the file system), which py-spy does not see.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import trio
from onnx import TensorProto, helper

WIDTH = 1024


def reduce_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        "reduce",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def tile_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "tile",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH]),
            helper.make_tensor_value_info("repeats", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def machine(root: Path) -> dict[str, float]:
    """What bounds a transfer here, measured now: sha256 (every copy is hashed once on
    receipt), a 256 MiB write with its fsync (every durable copy is synced), the load."""
    import hashlib
    import os

    data = os.urandom(256 << 20)
    started = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    sha = len(data) / 1e6 / (time.perf_counter() - started)
    path = root / "disk-probe"
    started = time.perf_counter()
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    disk = len(data) / 1e6 / (time.perf_counter() - started)
    path.unlink()
    return {
        "sha256_mb_per_s": sha,
        "fsynced_write_mb_per_s": disk,
        "cores": os.cpu_count() or 0,
        "load_average_1m": os.getloadavg()[0],
    }


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (each first touch of a fresh page)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def disk_io(pid: int | str) -> tuple[int, int]:
    """Bytes the process made the kernel read from and write to a disk so far
    (``/proc/PID/io``'s ``read_bytes`` and ``write_bytes``: the storage layer's, so a read
    served by the page cache counts nothing, a page written once counts once; 0 where
    the kernel keeps no I/O accounting)."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = int(value)
    except OSError:
        return 0, 0
    return fields.get("read_bytes", 0), fields.get("write_bytes", 0)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# --- the client side (run as a child process) -------------------------------------------


async def client_run(peer: str, scenario: str, rows: int, model_path: Path) -> dict[str, Any]:
    import resource

    from meshgpu.client import AsyncClient

    model = model_path.read_bytes()
    async with AsyncClient(peer, environ={}) as client:
        warm = {"x": np.ones((4, WIDTH), np.float32)}
        if scenario == "result":
            warm = {"x": np.ones((1, WIDTH), np.float32), "repeats": np.array([4, 1])}
        await (await client.submit(model, warm, direct=False)).result(120)
        idle = rss_self()
        print("warm", flush=True)  # the parent resets the daemons' peaks now
        x = np.empty((rows, WIDTH) if scenario == "input" else (1, WIDTH), np.float32)
        np.random.default_rng(1).random(out=x, dtype=np.float32)
        inputs: dict[str, np.ndarray] = {"x": x}
        if scenario == "result":
            inputs["repeats"] = np.array([rows, 1], np.int64)
        started = time.perf_counter()
        cpu = time.process_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        faults = usage.ru_minflt
        read, written = disk_io("self")
        handle = await client.submit(model, inputs)
        submitted = time.perf_counter() - started
        outputs = await handle.result(600)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults = after.ru_minflt - faults
        system = after.ru_stime - usage.ru_stime
        read_after, written_after = disk_io("self")
        y = outputs["y"]
        if scenario == "input":
            correct = y.shape == (rows,) and all(
                np.allclose(y[at : at + 65536], x[at : at + 65536].sum(axis=1), rtol=1e-4)
                for at in range(0, rows, 65536)
            )
        else:
            correct = y.shape == (rows, WIDTH) and all(
                bool((y[at : at + 65536] == x).all()) for at in range(0, rows, 65536)
            )
        task = {row["task_id"]: row for row in await client.tasks()}.get(handle.task_id, {})
        entry = client.peer[0] if client.peer else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "seconds": seconds,
        "submit_s": submitted,
        "cpu_s": cpu,
        "system_cpu_s": system,
        "minor_faults": faults,
        "disk_read_mib": (read_after - read) / 2**20,
        "disk_write_mib": (written_after - written) / 2**20,
        "correct": bool(correct),
        "idle": idle,
        "peak": peak,
        "task_id": handle.task_id,
        "worker": handle.worker,
        "holders": task.get("holders"),
        "result_holders": task.get("result_holders"),
        "entry": entry,
    }


def rss_self() -> int:
    import os

    return rss(os.getpid())["VmRSS"]


# --- the bench ---------------------------------------------------------------------------


def scenario(
    mesh: Any,
    name: str,
    mib: int,
    root: Path,
    environ: dict[str, str] | None = None,
    profile: Path | None = None,
    perf: Path | None = None,
) -> dict[str, Any]:
    rows = mib * (1 << 20) // (WIDTH * 4)
    model = root / f"{name}.onnx"
    onnx.save(reduce_model() if name == "input" else tile_model(), model)
    pids = {node.name: node.process.pid for node in mesh.nodes}
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", name, "--peer", mesh.nodes[0].peer,
         "--rows", str(rows), "--model", str(model)],
        stdout=subprocess.PIPE, env=environ,
    )  # fmt: skip
    # The client warms up first (a small task of the model on every path); reset the
    # daemons' peaks once it is past that, i.e. when it prints its marker.
    assert client.stdout is not None
    marker = client.stdout.readline()
    assert marker.strip() == b"warm", marker
    idle = {name: rss(pid)["VmRSS"] for name, pid in pids.items()}
    for pid in pids.values():
        reset_peak(pid)
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    system = {name: cpu_split(pid)[1] for name, pid in pids.items()}
    faults = {name: minor_faults(pid) for name, pid in pids.items()}
    disk = {name: disk_io(pid) for name, pid in pids.items()}
    watched = {**pids, "client": client.pid}
    spies = [] if profile is None else start_spies(profile, name, watched)
    perfs = [] if perf is None else start_perf(perf, name, watched)
    out, _ = client.communicate(timeout=900)
    profiles = stop_spies(spies)
    stop_perf(perfs)
    dead = dead_daemons(mesh)
    if dead:
        raise SystemExit(f"scenario {name}: " + "; ".join(dead))
    result = json.loads(out)
    peaks = {name: rss(pid)["VmHWM"] for name, pid in pids.items()}
    cpu = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
    system = {name: cpu_split(pid)[1] - system[name] for name, pid in pids.items()}
    faults = {name: minor_faults(pid) - faults[name] for name, pid in pids.items()}
    disk = {
        name: tuple(now - then for now, then in zip(disk_io(pid), disk[name], strict=True))
        for name, pid in pids.items()
    }
    tensor = rows * WIDTH * 4
    processes = {
        name: {"idle_mib": idle[name] / 2**20, "peak_mib": peaks[name] / 2**20,
               "peak_over_idle_per_tensor": (peaks[name] - idle[name]) / tensor,
               "cpu_s": cpu[name], "system_cpu_s": system[name],
               "minor_faults": faults[name],
               "disk_read_mib": disk[name][0] / 2**20, "disk_write_mib": disk[name][1] / 2**20}
        for name in pids
    }  # fmt: skip
    processes["client"] = {
        "idle_mib": result["idle"] / 2**20,
        "peak_mib": result["peak"] / 2**20,
        "peak_over_idle_per_tensor": (result["peak"] - result["idle"]) / tensor,
        "cpu_s": result["cpu_s"],
        "system_cpu_s": result["system_cpu_s"],
        "minor_faults": result["minor_faults"],
        "disk_read_mib": result["disk_read_mib"],
        "disk_write_mib": result["disk_write_mib"],
    }
    return {
        "scenario": name,
        "tensor_mib": tensor / 2**20,
        "seconds": result["seconds"],
        "submit_s": result["submit_s"],
        "mb_per_s": tensor / 1e6 / result["seconds"],
        "correct": result["correct"],
        "entry": result["entry"],
        "worker": result["worker"],
        "holders": result["holders"],
        "result_holders": result["result_holders"],
        "processes": processes,
        **({"profile": profiles} if profile is not None else {}),
    }


def dead_daemons(mesh: Any) -> list[str]:
    """A line per daemon of ``mesh`` that is no longer running (its exit status, and
    whether the kernel's OOM killer is the likely cause, and the tail of its log): a
    daemon that died has no peak to report, and the run's figures mean nothing."""
    dead = []
    for node in mesh.nodes:
        code = node.process.poll() if node.process is not None else None
        if code is None:
            continue
        why = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if code == -9:
            why += " (SIGKILL: the OOM killer? see dmesg)"
        tail = ""
        with contextlib.suppress(OSError):
            tail = " | ".join(node.log.read_text(errors="replace").splitlines()[-3:])
        dead.append(f"daemon {node.name} {why} during the scenario; its log ends: {tail}")
    return dead


def start_spies(directory: Path, scenario: str, pids: dict[str, int]) -> list[Any]:
    """One ``py-spy record`` per process, writing collapsed stacks under ``directory``."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, pid in pids.items():
        out = directory / f"{scenario}-{name}.txt"
        process = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--format", "raw",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        spies.append((name, out, process))
    time.sleep(0.5)  # py-spy attaches before the client's submit matters
    return spies


STAT_EVENTS = ",".join(
    ["page-faults", "context-switches"]
    + [
        f"syscalls:sys_enter_{call}"
        for call in ("recvfrom", "sendto", "sendmsg", "epoll_wait", "futex", "madvise", "pwrite64",
                     "write", "mmap", "munmap")
    ]
)  # fmt: skip
"""What ``perf stat`` counts per process beside ``--perf``'s samples."""


def start_perf(directory: Path, scenario: str, pids: dict[str, int]) -> list[Any]:
    """One ``perf record -g`` per process (kernel and native stacks, every thread),
    writing ``directory/<scenario>-<process>.data`` for ``perf report -i``, and one
    ``perf stat`` of ``STAT_EVENTS`` into ``<scenario>-<process>.stat``."""
    directory.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        out = directory / f"{scenario}-{name}.data"
        process = subprocess.Popen(
            ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        recorders.append(process)
        counts = subprocess.Popen(
            ["perf", "stat", "-e", STAT_EVENTS, "-p", str(pid), "-o",
             str(directory / f"{scenario}-{name}.stat")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        recorders.append(counts)
    time.sleep(0.5)  # perf attaches before the client's submit matters
    return recorders


def stop_perf(recorders: list[Any]) -> None:
    import signal

    for process in recorders:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in recorders:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def stop_spies(spies: list[Any]) -> dict[str, Any]:
    """Stop the samplers; per process, its samples and the top functions by self and by
    total samples (a function counted once per stack)."""
    import signal
    from collections import Counter

    for _, _, process in spies:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    profiles = {}
    for name, out, process in spies:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        samples = 0
        if out.exists():
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if not count.isdigit():
                    continue
                frames = [frame.split(" (")[0] for frame in stack.split(";")]
                samples += int(count)
                own[frames[-1]] += int(count)
                for frame in set(frames):
                    total[frame] += int(count)
        profiles[name] = {
            "samples": samples,
            "self": own.most_common(12),
            "total": total.most_common(25),
        }
    return profiles


def profile_table(runs: list[dict[str, Any]]) -> str:
    lines = []
    for run in runs:
        for name, profile in run.get("profile", {}).items():
            samples = max(profile["samples"], 1)
            lines.append(f"{run['scenario']} {name}: {profile['samples']} samples (100/s)")
            for label in ("self", "total"):
                for frame, count in profile[label]:
                    lines.append(f"    {label:5} {100 * count / samples:5.1f}%  {frame}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another meshgpu version to run alternately with this one",
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of each with --baseline")
    parser.add_argument("--profile", type=Path, help="py-spy every process into this folder")
    parser.add_argument(
        "--perf", type=Path, help="perf record -g every process into this folder (perf report -i)"
    )
    parser.add_argument(
        "--scenarios", default="input,result", help="which to run (input, result or both)"
    )
    parser.add_argument(
        "--data-dir-root",
        type=Path,
        help="put the daemons' data directories under this folder (e.g. a tmpfs such as "
        "/dev/shm, to see the CPU's bound apart from the disk's: a diagnostic, not the "
        "figure); the bench's scratch folder when left out",
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--wait-alive", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wait_alive:
        trio.run(wait_alive, args.wait_alive, args.rows)
        return
    if args.client:
        result = trio.run(client_run, args.peer, args.client, args.rows, args.model)
        print(json.dumps(result), flush=True)
        return

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgpu-bigtensor-")))
        meshes = root
        if args.data_dir_root is not None:
            args.data_dir_root.mkdir(parents=True, exist_ok=True)
            meshes = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="meshgpu-bigtensor-", dir=args.data_dir_root)
                )
            )
        before = machine(meshes)
        if args.baseline is None:
            runs = one_mesh(
                meshes / "mesh", args.mib, root, None, args.scenarios.split(","), args.profile,
                args.perf,
            )  # fmt: skip
            report = {"bench": "bigtensor", "mib": args.mib, "machine": before, "runs": runs}
        else:
            report = compare(
                root, args.mib, args.baseline.resolve(), args.rounds, before,
                args.scenarios.split(","), meshes,
            )  # fmt: skip
        report["data_dir_root"] = str(meshes)
    if not args.json:
        print(
            f"machine: {before['cores']} cores, load {before['load_average_1m']:.1f}, sha256 "
            f"{before['sha256_mb_per_s']:.0f} MB/s, fsynced write "
            f"{before['fsynced_write_mb_per_s']:.0f} MB/s"
        )
        if args.baseline is None:
            print(table(report["runs"]))
            if args.profile is not None:
                print(profile_table(report["runs"]))
        else:
            print(comparison_table(report))
    print(json.dumps(report))


def one_mesh(
    directory: Path,
    mib: int,
    root: Path,
    pythonpath: Path | None,
    scenarios: list[str] | tuple[str, ...] = ("input", "result"),
    profile: Path | None = None,
    perf: Path | None = None,
) -> list[dict[str, Any]]:
    """Both scenarios on a fresh 3-daemon mesh running the meshgpu on ``pythonpath``
    (this checkout's when None)."""
    import os

    from meshgpu.client.localmesh import LocalMesh

    environ = dict(os.environ)
    saved = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
        os.environ["PYTHONPATH"] = str(pythonpath)  # LocalMesh starts daemons with it
    # The daemons run ``python -m meshgpu``, which puts the working directory first on
    # sys.path: started from a checkout, they would run that checkout's meshgpu
    # whatever PYTHONPATH names. They start from the scratch directory instead.
    saved_cwd = os.getcwd()
    os.chdir(root)
    try:
        with LocalMesh(directory, 3, prefix="bt", slots=1) as mesh:
            # The mesh's own meshgpu asks (another version refuses this one's client).
            subprocess.run(
                [sys.executable, __file__, "--wait-alive", mesh.nodes[0].peer,
                 "--rows", str(len(mesh.nodes))],
                env=environ, check=True,
            )  # fmt: skip
            return [scenario(mesh, name, mib, root, environ, profile, perf) for name in scenarios]
    finally:
        os.chdir(saved_cwd)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def compare(
    root: Path,
    mib: int,
    baseline: Path,
    rounds: int,
    machine_now: dict[str, float],
    scenarios: list[str] | tuple[str, ...] = ("input", "result"),
    meshes: Path | None = None,
) -> dict[str, Any]:
    """This checkout and ``baseline`` alternately, ``rounds`` times each; medians
    (``meshes``: where the daemons' data directories go, ``root`` when None)."""
    import statistics

    runs: dict[str, list[list[dict[str, Any]]]] = {"this": [], "baseline": []}
    for number in range(rounds):
        for label, path in (("baseline", baseline), ("this", None)):
            directory = (meshes or root) / f"{label}-{number}"
            runs[label].append(one_mesh(directory, mib, root, path, scenarios))
    summary = {}
    for name in scenarios:
        row: dict[str, Any] = {}
        for label in runs:
            mine = [next(r for r in run if r["scenario"] == name) for run in runs[label]]
            row[label] = {
                "mb_per_s": statistics.median(r["mb_per_s"] for r in mine),
                "mb_per_s_each": [r["mb_per_s"] for r in mine],
                "correct": all(r["correct"] for r in mine),
                "cpu_s": statistics.median(
                    sum(p["cpu_s"] for p in r["processes"].values()) for r in mine
                ),
                "worst_peak_over_idle_per_tensor": max(
                    p["peak_over_idle_per_tensor"] for r in mine for p in r["processes"].values()
                ),
            }
        row["speedup"] = row["this"]["mb_per_s"] / row["baseline"]["mb_per_s"]
        row["cpu_ratio"] = row["this"]["cpu_s"] / row["baseline"]["cpu_s"]
        summary[name] = row
    return {
        "bench": "bigtensor",
        "mib": mib,
        "machine": machine_now,
        "baseline": str(baseline),
        "rounds": rounds,
        "summary": summary,
        "runs": runs,
    }


def comparison_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':9} {'tree':9} {'MB/s (median)':>14} {'each':>22} {'CPU s':>7} "
        f"{'worst (peak-idle)/tensor':>25} {'correct':>8}"
    ]
    for name, row in report["summary"].items():
        for label in ("baseline", "this"):
            cell = row[label]
            each = ", ".join(f"{value:.0f}" for value in cell["mb_per_s_each"])
            lines.append(
                f"{name:9} {label:9} {cell['mb_per_s']:>14.0f} {each:>22} {cell['cpu_s']:>7.2f} "
                f"{cell['worst_peak_over_idle_per_tensor']:>25.2f} {cell['correct']!s:>8}"
            )
        lines.append(
            f"{name:9} {'ratio':9} {row['speedup']:>14.2f} {'':>22} {row['cpu_ratio']:>7.2f}"
        )
    return "\n".join(lines)


async def wait_alive(peer: str, nodes: int) -> None:
    from meshgpu.client import AsyncClient

    async with AsyncClient(peer, environ={}) as client:
        await client.call("wait", alive=nodes, timeout=60)


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        f"{'scenario':9} {'tensor':>8} {'seconds':>8} {'MB/s':>7} {'correct':>8}  "
        f"{'process':8} {'role':20} {'idle MiB':>9} {'peak MiB':>9} {'(peak-idle)/tensor':>19} "
        f"{'CPU s':>6} {'sys s':>6} {'disk w MiB':>10} {'disk r MiB':>10} {'faults k':>8}"
    ]
    for run in runs:
        first = True
        for name, process in run["processes"].items():
            roles = []
            if name == run["entry"]:
                roles.append("entry")
            if name in (run["holders"] or []):
                roles.append("holder")
            if name == run["worker"]:
                roles.append("worker")
            head = (
                f"{run['scenario']:9} {run['tensor_mib']:>6.0f}Mi {run['seconds']:>8.2f} "
                f"{run['mb_per_s']:>7.0f} {run['correct']!s:>8}"
                if first
                else " " * 44
            )
            first = False
            lines.append(
                f"{head}  {name:8} {','.join(roles) or '-':20} {process['idle_mib']:>9.0f} "
                f"{process['peak_mib']:>9.0f} {process['peak_over_idle_per_tensor']:>19.2f} "
                f"{process['cpu_s']:>6.2f} {process.get('system_cpu_s', 0.0):>6.2f} "
                f"{process.get('disk_write_mib', 0.0):>10.0f} "
                f"{process.get('disk_read_mib', 0.0):>10.0f} "
                f"{process['minor_faults'] / 1000:>8.0f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
