"""Client-side numbers of a 3-daemon loopback mesh: per-task overhead, throughput, and
the leader's SIGKILL under load. Prints a table and one JSON object; asserts nothing.

    python bench/daemon.py [--tasks 200] [--sequential 60] [--json]

* ``overhead``: one single-sample digits task at a time, submit to result, warm (the
  design's target: p50 under 2 ms on loopback), next to the local onnxruntime run;
* ``throughput``: ``Client.map`` over single-sample tasks (window 64);
* ``leader_kill``: the leader SIGKILLed a third of the way through a ``map``: the longest
  gap between two consecutive results (how long work stalled), the time until the
  client's peer declared the victim dead and named a new leader, and tasks lost.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from meshgpu import inference
from meshgpu.client import AsyncClient, Client
from meshgpu.client.localmesh import LocalMesh
from meshgpu.inference.model import SHIPPED_MODELS_DIR


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def overhead(peer: str, pixels: np.ndarray, count: int) -> dict[str, float]:
    session = inference.load("digits", backend="onnxruntime")
    local = []
    for row in pixels[:count]:
        started = time.perf_counter()
        session.run({"pixels": row[None]})
        local.append(time.perf_counter() - started)
    mesh = []
    with Client(peer, environ={}) as client:
        client.submit("digits", {"pixels": pixels[:1]}).result(60)  # warm: model uploaded
        for row in pixels[:count]:
            started = time.perf_counter()
            client.submit("digits", {"pixels": row[None]}).result(60)
            mesh.append(time.perf_counter() - started)
    return {
        "local_p50_ms": statistics.median(local) * 1e3,
        "mesh_p50_ms": statistics.median(mesh) * 1e3,
        "mesh_p90_ms": percentile(mesh, 0.9) * 1e3,
    }


def throughput(peer: str, pixels: np.ndarray, count: int) -> dict[str, float]:
    with Client(peer, environ={}) as client:
        started = time.perf_counter()
        done = sum(1 for _ in client.map("digits", ({"pixels": r[None]} for r in pixels[:count])))
        elapsed = time.perf_counter() - started
    return {"tasks": done, "seconds": elapsed, "tasks_per_s": done / elapsed}


async def leader_kill(mesh: LocalMesh, pixels: np.ndarray, count: int) -> dict[str, float | int]:
    async with AsyncClient(mesh.nodes[0].peer, environ={}, status_interval=0.5) as probe:
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
        AsyncClient(entry.peer, environ={}, status_interval=0.5) as client,
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
    args = parser.parse_args()
    pixels = np.load(SHIPPED_MODELS_DIR / "digits_test.npz")["pixels"]
    with (
        tempfile.TemporaryDirectory(prefix="meshgpu-bench-") as root,
        LocalMesh(Path(root), 3, prefix="bench") as mesh,
    ):
        trio.run(_formed, mesh)
        report = {
            "overhead": overhead(mesh.nodes[0].peer, pixels, args.sequential),
            "throughput": throughput(mesh.nodes[1].peer, pixels, args.tasks),
            "leader_kill": trio.run(leader_kill, mesh, pixels, args.tasks),
        }
    if not args.json:
        for section, values in report.items():
            for name, value in values.items():
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                print(f"{section:12} {name:28} {shown}", file=sys.stderr)
    print(json.dumps(report))


async def _formed(mesh: LocalMesh) -> None:
    async with AsyncClient(mesh.nodes[0].peer, environ={}) as client:
        await client.call("wait", alive=len(mesh.nodes), timeout=60)


if __name__ == "__main__":
    main()
