"""Scaling: loopback meshes of 1, 3, 10 and 30 daemons whose devices are synthetic
(``--device synthetic:MS``: a slot held MS ms, no inference), against the ideal.

    python bench/scaling.py [--quick] [--json] [--nodes 1,3,10,30] [--service 20,5]
                            [--group N] [--compare-ungrouped]

For each mesh size N and service time S, one client on the first node runs ``Client.map``
with a window of 4 x N x slots x G tasks (G: ``--group``, or the most members ``map``
puts in a group, 64, when it chooses the size; enough to keep every slot busy with
groups if the mesh can, and never the bound on the size ``map`` chooses) for
``--seconds`` (count bounded too: ideal rate x seconds, at most ``--max-tasks``).
Throughput is completed tasks / elapsed; the ideal is N x slots / S; efficiency is the
ratio. The mesh is started and formed once per N (not timed) and serves both service
times, one after the other (a fresh mesh per service time would double the start-up
cost of 30 processes on a small machine), so the device is chosen per mesh: meshes are
started with ``synthetic:S`` for each S in turn.

Task groups (docs/task-queue.md) are on by default (``map`` chooses the size: at the
default target of 400 ms a group, or capacity / 20 entries a second in a larger mesh, 20
members of a 20 ms device at 3 nodes, 50 at 10, 64 (the most) at 30 and for a 5 ms
device); ``--group 1`` is the behaviour before
groups; ``--compare-ungrouped`` runs each point ungrouped too, on the same mesh.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from loopback import conditions, exit_on_sigterm, identity_model, show_table, wait_formed

from meshgpu.client import Client
from meshgpu.client.batches import GROUP_MAX
from meshgpu.client.localmesh import LocalMesh


def run_one(nodes: int, service_ms: float, args: argparse.Namespace, root: Path) -> list[Any]:
    """One mesh of ``nodes`` daemons: the grouped point (and the ungrouped one when asked)."""
    before = conditions()
    started_mesh = time.monotonic()
    with LocalMesh(
        root / f"n{nodes}-s{service_ms:g}",
        nodes,
        prefix=f"scale{nodes}",
        slots=args.slots,
        extra_args=("--device", f"synthetic:{service_ms:g}"),
        start_timeout=300.0,
    ) as mesh:
        wait_formed(mesh, timeout=300.0)
        formed_s = time.monotonic() - started_mesh
        with Client(mesh.nodes[0].peer, environ={}) as client:
            groups = [args.group] + ([1] if args.compare_ungrouped and args.group != 1 else [])
            points = []
            for group in groups:
                point = measure(client, nodes, service_ms, group, args)
                point.update(mesh_start_s=round(formed_s, 1), loadavg_before=before["loadavg"])
                print(json.dumps(point), file=sys.stderr)
                points.append(point)
    return points


def measure(
    client: Client, nodes: int, service_ms: float, group: int | None, args: argparse.Namespace
) -> dict[str, Any]:
    slots = args.slots
    ideal = nodes * slots / (service_ms / 1e3)
    count = int(min(args.max_tasks, max(50, ideal * args.seconds)))
    window = max(64, 4 * nodes * slots * (GROUP_MAX if group is None else group))
    model = identity_model()
    x = np.zeros((1, 16), np.float32)
    warm = max(10, nodes * slots)
    for _ in client.map(model, ({"x": x} for _ in range(warm)), window=window, group=group):
        pass
    deadline = time.monotonic() + args.seconds

    def bounded() -> Any:
        for _ in range(count):
            if time.monotonic() > deadline:
                return
            yield {"x": x}

    begun = time.perf_counter()
    workers: dict[str, int] = {}
    done = 0
    for item in client.map(model, bounded(), window=window, group=group):
        done += 1
        workers[item.worker or "?"] = workers.get(item.worker or "?", 0) + 1
    elapsed = time.perf_counter() - begun
    tps = done / elapsed
    return {
        "nodes": nodes,
        "service_ms": service_ms,
        "slots": slots,
        "group": "auto" if group is None else group,
        "window": window,
        "tasks": done,
        "seconds": round(elapsed, 3),
        "tps": tps,
        "ideal_tps": ideal,
        "efficiency": tps / ideal,
        "workers_used": len(workers),
        "busiest_worker_share": max(workers.values()) / done if done else 0.0,
        "loadavg_after": conditions()["loadavg"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s per point")
    parser.add_argument("--json", action="store_true", help="end with the JSON object")
    parser.add_argument("--nodes", default="1,3,10,30", help="mesh sizes, comma-separated")
    parser.add_argument("--service", default="20,5", help="service times in ms")
    parser.add_argument("--slots", type=int, default=1, help="slots per daemon")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed part per point")
    parser.add_argument("--max-tasks", type=int, default=5000)
    parser.add_argument(
        "--group", type=int, default=None, help="members per task group (default: map chooses)"
    )
    parser.add_argument(
        "--compare-ungrouped", action="store_true", help="also run each point with --group 1"
    )
    args = parser.parse_args()
    exit_on_sigterm()
    if args.quick:
        args.seconds = 5.0
    points = []
    with tempfile.TemporaryDirectory(prefix="meshgpu-scaling-") as root:
        for service_ms in (float(s) for s in args.service.split(",")):
            for nodes in (int(n) for n in args.nodes.split(",")):
                points.extend(run_one(nodes, service_ms, args, Path(root)))
    efficiency: dict[str, dict[str, float]] = {}
    ungrouped: dict[str, dict[str, float]] = {}
    for point in points:
        if point["group"] == 1 and args.group != 1:
            ungrouped.setdefault(f"{point['service_ms']:g}", {})[str(point["nodes"])] = point[
                "efficiency"
            ]
            continue
        efficiency.setdefault(f"{point['service_ms']:g}", {})[str(point["nodes"])] = point[
            "efficiency"
        ]
    show_table(
        "scaling, synthetic devices, one client",
        [
            "service ms",
            "nodes",
            "group",
            "tasks",
            "tasks/s",
            "ideal",
            "efficiency",
            "workers",
            "load",
        ],
        [
            (
                f"{p['service_ms']:g}",
                p["nodes"],
                p["group"],
                p["tasks"],
                p["tps"],
                p["ideal_tps"],
                p["efficiency"],
                p["workers_used"],
                p["loadavg_before"][0],
            )
            for p in points
        ],
    )
    if args.json:
        answer: dict[str, Any] = {"efficiency": efficiency, "points": points}
        if ungrouped:
            answer["efficiency_ungrouped"] = ungrouped
        print(json.dumps(answer))


if __name__ == "__main__":
    main()
