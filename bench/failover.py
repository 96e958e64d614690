"""Failover: a 5-daemon loopback mesh under steady load; SIGKILL the leader, then a
worker, then a node holding replicas, and measure what each kill costs.

    python bench/failover.py [--quick] [--json] [--service-ms 20]

The daemons run the synthetic device (``synthetic:MS``, one slot) with
``MESHGPU_SYNTHETIC_RUN_LOG`` set, so every finished execution is written down, on the
victims too. Each task's input is its own number, so executions count per task. One
client on the first node (never a victim unless it is the leader) keeps ``--window``
tasks in flight the whole time. For each kill:

* ``detect_s_max``: from the SIGKILL until every live node declares the victim dead
  (one connection per live node, woken by its membership changes: the ``wait`` op);
* ``resume_s``: from the SIGKILL until the first result of a task submitted after it
  (assignment, run and result all working again);
* ``drained_s``: until every task submitted before the kill has its result (the victim's
  running and queued work redone elsewhere);
* ``lost``: acknowledged tasks with no result by the end (after ``--drain-timeout``),
  ``duplicate_executions``: tasks executed more than once, both counted for the tasks
  submitted between the previous kill and this one (the ones this kill can hurt).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
from loopback import conditions, exit_on_sigterm, identity_model, show_table, wait_formed

from meshgpu.client import AsyncClient
from meshgpu.client.localmesh import LocalMesh, LocalNode
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.rpc import open_rpc
from meshgpu.daemon.synthetic import RUN_LOG_VARIABLE
from meshgpu.errors import MeshError

NODES = 5


@dataclass
class Load:
    """The steady load: when each task was submitted, acknowledged and finished."""

    submitted: dict[int, float] = field(default_factory=dict)
    acknowledged: set[int] = field(default_factory=set)
    finished: dict[int, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    refused: int = 0
    changed: trio.Event = field(default_factory=trio.Event)
    stop: bool = False

    def finish(self, index: int, at: float) -> None:
        self.finished[index] = at
        self.changed.set()
        self.changed = trio.Event()


async def keep_busy(client: AsyncClient, load: Load, window: int, limit: int) -> None:
    """Keep ``window`` tasks in flight until ``load.stop`` (at most ``limit`` tasks)."""
    model = identity_model()
    free = trio.Semaphore(window)

    async def one(index: int) -> None:
        try:
            load.submitted[index] = time.monotonic()
            try:
                handle = await client.submit(model, {"x": np.full((1, 16), index, np.float32)})
            except MeshError:
                load.refused += 1
                return
            load.acknowledged.add(index)
            outcome = await handle.wait()
            if outcome.error is not None:
                load.failed[index] = str(outcome.error)
            load.finish(index, time.monotonic())
        finally:
            free.release()

    async with trio.open_nursery() as nursery:
        for index in range(limit):
            await free.acquire()
            if load.stop:
                break
            nursery.start_soon(one, index)


async def declared_dead(node: LocalNode, victim: str, killed: trio.Event) -> float:
    """Seconds from the kill until ``node`` says ``victim`` is dead (bounded by callers)."""
    authenticator = Authenticator(None, f"client-bench-{secrets.token_hex(4)}")
    async with open_rpc(node.address, authenticator) as rpc:
        generation = -1
        while True:
            status = await rpc.call("wait", after_generation=generation, timeout=30)
            generation = status["generation"]
            states = {m["node_id"]: m["state"] for m in status["members"]}
            gone = {g["node_id"] for g in status.get("gone", [])}
            if killed.is_set() and (states.get(victim) in ("dead", "left") or victim in gone):
                return time.monotonic()


async def choose_victim(client: AsyncClient, mesh: LocalMesh, role: str, entry: str) -> LocalNode:
    status = await client.status()
    alive = {m["node_id"] for m in status["members"] if m["state"] == "alive"}
    live = [n for n in mesh.nodes if n.running and n.name in alive]
    leader = status["leader"]
    if role == "leader":
        return next(n for n in live if n.name == leader)
    rows = await client.tasks()
    counts: Counter[str] = Counter()
    for row in rows:
        if row["state"] not in ("pending", "assigned", "retrying"):
            continue
        if role == "worker" and row["state"] == "assigned" and row["worker"]:
            counts[row["worker"]] += 1
        if role == "holder":
            counts.update(row["holders"])
    ranked = [name for name, _ in counts.most_common()] + [n.name for n in live]
    for name in ranked:
        node = next((n for n in live if n.name == name), None)
        if node is not None and name not in (entry, leader):
            return node
    raise MeshError(f"no live node fits the role {role!r}")


async def one_kill(
    client: AsyncClient, mesh: LocalMesh, load: Load, role: str, args: argparse.Namespace
) -> dict[str, Any]:
    entry = mesh.nodes[0].name
    victim = await choose_victim(client, mesh, role, entry)
    watchers = [n for n in mesh.nodes if n.running and n is not victim]
    killed = trio.Event()
    detected: dict[str, float] = {}
    before = max(load.submitted, default=-1)
    load_1m = os.getloadavg()[0]

    async def watch(node: LocalNode) -> None:
        try:
            detected[node.name] = await declared_dead(node, victim.name, killed)
        except MeshError as error:
            print(f"watcher on {node.name}: {error}", file=sys.stderr)

    result: dict[str, Any] = {"role": role, "victim": victim.name, "loadavg_1m": load_1m}
    async with trio.open_nursery() as nursery:
        for node in watchers:
            nursery.start_soon(watch, node)
        await trio.sleep(0.2)  # watchers connected and waiting (not a timing assumption)
        victim.kill()
        killed_at = time.monotonic()
        killed.set()
        with trio.move_on_after(args.detect_timeout):
            while len(detected) < len(watchers):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    result["detect_s_max"] = (
        max(detected.values()) - killed_at if len(detected) == len(watchers) else None
    )
    result["detected_by"] = f"{len(detected)}/{len(watchers)}"
    result["resume_s"] = await first_result_after(load, killed_at, args.detect_timeout)
    result["drained_s"] = await drained(load, before, killed_at, args.drain_timeout)
    result["_submitted_before"] = before
    return result


async def first_result_after(load: Load, since: float, timeout: float) -> float | None:
    with trio.move_on_after(timeout):
        while True:
            later = [at for i, at in load.finished.items() if load.submitted.get(i, 0.0) > since]
            if later:
                return min(later) - since
            await load.changed.wait()
    return None


async def drained(load: Load, last_index: int, since: float, timeout: float) -> float | None:
    with trio.move_on_after(timeout):
        while True:
            waiting = [i for i in load.acknowledged if i <= last_index and i not in load.finished]
            if not waiting:
                done = [load.finished[i] for i in load.acknowledged if i <= last_index]
                return max(0.0, max(done, default=since) - since)
            await load.changed.wait()
    return None


def executions(run_log: Path) -> Counter[int]:
    counts: Counter[int] = Counter()
    if run_log.exists():
        for line in run_log.read_text().splitlines():
            label = line.split()[0]
            if label != "-":
                counts[int(float(label))] += 1
    return counts


async def run(mesh: LocalMesh, args: argparse.Namespace, run_log: Path) -> list[dict[str, Any]]:
    load = Load()
    kills = []
    async with (
        AsyncClient(mesh.nodes[0].peer, environ={}, status_interval=0.5) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(keep_busy, client, load, args.window, args.max_tasks)
        await trio.sleep(args.warmup)
        for role in ("leader", "worker", "holder"):
            kills.append(await one_kill(client, mesh, load, role, args))
            print(json.dumps(kills[-1]), file=sys.stderr)
            await trio.sleep(args.between)
        load.stop = True
        with trio.move_on_after(args.drain_timeout):
            while len(load.finished) < len(load.acknowledged):
                await load.changed.wait()
        nursery.cancel_scope.cancel()
    counts = executions(run_log)
    lower = -1
    for kill in kills:
        upper = kill.pop("_submitted_before")
        if kill is kills[-1]:
            upper = max(load.submitted, default=-1)
        window = [i for i in load.acknowledged if lower < i <= upper]
        kill["tasks"] = len(window)
        kill["lost"] = sum(1 for i in window if i not in load.finished)
        kill["failed"] = sum(1 for i in window if i in load.failed)
        kill["duplicate_executions"] = sum(1 for i in window if counts[i] > 1)
        lower = upper
    total = {
        "acknowledged": len(load.acknowledged),
        "finished": len(load.finished),
        "refused": load.refused,
        "executions": sum(counts.values()),
    }
    print(json.dumps(total), file=sys.stderr)
    return kills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter pauses")
    parser.add_argument("--json", action="store_true", help="end with the JSON object")
    parser.add_argument("--service-ms", type=float, default=20.0)
    parser.add_argument("--window", type=int, default=16, help="tasks in flight")
    parser.add_argument("--max-tasks", type=int, default=20000)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--between", type=float, default=5.0, help="pause after a kill")
    parser.add_argument("--detect-timeout", type=float, default=30.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args()
    exit_on_sigterm()
    if args.quick:
        args.warmup, args.between = 3.0, 2.0
    before = conditions()
    with tempfile.TemporaryDirectory(prefix="meshgpu-failover-") as root:
        run_log = Path(root) / "runs.log"
        os.environ[RUN_LOG_VARIABLE] = str(run_log)  # inherited by the daemons
        with LocalMesh(
            Path(root) / "mesh",
            NODES,
            prefix="failover",
            slots=1,
            extra_args=("--device", f"synthetic:{args.service_ms:g}"),
            start_timeout=120.0,
        ) as mesh:
            wait_formed(mesh)
            kills = trio.run(run, mesh, args, run_log)
    show_table(
        f"failover, {NODES} nodes, synthetic:{args.service_ms:g}, loadavg {before['loadavg']}",
        ["role", "victim", "detect s", "by", "resume s", "drained s", "lost", "dup", "tasks"],
        [
            (
                k["role"],
                k["victim"],
                k["detect_s_max"],
                k["detected_by"],
                k["resume_s"],
                k["drained_s"],
                k["lost"],
                k["duplicate_executions"],
                k["tasks"],
            )
            for k in kills
        ],
    )
    if args.json:
        print(json.dumps({"kills": kills, "conditions": [before, conditions()]}))


if __name__ == "__main__":
    main()
