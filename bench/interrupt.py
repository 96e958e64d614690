"""Ctrl-C on ``meshgpu submit``: how long until the command exits, and is every task the
mesh accepted either saved or named?

    python bench/interrupt.py [--tasks 120] [--runs 5] [--service-ms 50] [--json]

A 3-daemon loopback mesh runs the synthetic device (``synthetic:MS``, one slot each).
Each run starts ``meshgpu submit`` on ``--tasks`` input files as a child process, sends
it SIGINT once a share of the results are saved (the first run after 10 %, the last at
70 %: early, while submitting, and late, while waiting), and measures:

* ``exit_s``: from the SIGINT until the process has exited (target: under 1 s);
* ``exit_code`` (130 expected) and ``traceback`` (any ``Traceback`` on stderr);
* ``saved``, ``ids_printed`` (``TASK_ID<TAB>STEM`` lines on stdout), ``not_submitted``;
* ``unnamed``: tasks the mesh accepted that were neither saved nor printed, found by
  running the printed ``meshgpu collect`` and then asking the entry node for every table
  entry not collected (target: 0). ``collected`` is what that collect saved.

The machine is shared: compare runs of one invocation, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio
from loopback import conditions, exit_on_sigterm, identity_model, show_table, wait_formed

from meshgpu.client import AsyncClient
from meshgpu.client.localmesh import LocalMesh

MESHGPU = [sys.executable, "-m", "meshgpu"]


def submit_and_interrupt(
    model: Path, inputs: Path, out: Path, peer: str, tasks: int, fraction: float
) -> dict[str, Any]:
    """One run: start the submit, SIGINT it after ``fraction`` of the results, measure."""
    out.mkdir()
    command = [*MESHGPU, "submit", str(model), "-i", f"x={inputs}", "-o", str(out)]
    process = subprocess.Popen(
        [*command, "--peer", peer], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    want = max(1, int(tasks * fraction))
    started = time.monotonic()
    while len(list(out.glob("*.npz"))) < want and process.poll() is None:
        if time.monotonic() - started > 120:
            break
        time.sleep(0.01)
    saved_at_signal = len(list(out.glob("*.npz")))
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    exit_s = time.monotonic() - signalled
    ids = [line.split("\t") for line in stdout.decode().splitlines() if "\t" in line]
    text = stderr.decode()
    saved = {path.stem for path in out.glob("*.npz")}
    return {
        "interrupt_after": f"{saved_at_signal}/{tasks}",
        "exit_s": round(exit_s, 3),
        "exit_code": process.returncode,
        "traceback": "Traceback" in text,
        "saved": len(saved),
        "ids_printed": len(ids),
        "ids": ids,
        "summary": next((line for line in text.splitlines() if "interrupted:" in line), None),
    }


def uncollected(peer: str) -> set[str]:
    """Ids of the table entries nobody has collected."""

    async def ask() -> set[str]:
        async with AsyncClient(peer, environ={}) as client:
            return {row["task_id"] for row in await client.tasks() if not row.get("delivered")}

    return trio.run(ask)


def collect_and_count(ids: list[list[str]], out: Path, peer: str) -> dict[str, Any]:
    """Collect the printed ids, then list the table entries nobody has collected."""
    if ids:
        listing = out.parent / f"{out.name}-ids.txt"
        listing.write_text("".join(f"{task_id}\t{stem}\n" for task_id, stem in ids))
        result = subprocess.run(
            [*MESHGPU, "collect", "--ids", str(listing), "-o", str(out), "--peer", peer,
             "--timeout", "60"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if result.returncode != 0:
            print(f"collect failed: {result.stderr.strip()[-500:]}", file=sys.stderr)
    collected = len(list(out.glob("*.npz")))

    return {"saved_after_collect": collected, "unnamed": uncollected(peer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--service-ms", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args()
    exit_on_sigterm()
    root = Path(tempfile.mkdtemp(prefix="meshgpu-bench-interrupt-"))
    model = root / "identity.onnx"
    model.write_bytes(identity_model())
    inputs = root / "inputs"
    inputs.mkdir()
    for index in range(args.tasks):
        np.save(inputs / f"{index:04d}.npy", np.full((1, 16), index, np.float32))
    device = ("--device", f"synthetic:{args.service_ms}")
    runs = []
    with LocalMesh(root / "mesh", 3, prefix="ctrlc", extra_args=device) as mesh:
        wait_formed(mesh)
        peer = mesh.nodes[0].peer
        for run in range(args.runs):
            fraction = 0.1 + 0.6 * run / max(1, args.runs - 1)
            out = root / f"out-{run}"
            earlier = uncollected(peer)  # left by an earlier run: not this run's
            measured = submit_and_interrupt(model, inputs, out, peer, args.tasks, fraction)
            counted = collect_and_count(measured.pop("ids"), out, peer)
            measured["ids_printed_collected"] = counted["saved_after_collect"] - measured["saved"]
            measured["accounted"] = counted["saved_after_collect"]
            measured["unnamed"] = len(counted["unnamed"] - earlier)
            runs.append(measured)
    report = {
        "benchmark": "interrupt",
        "tasks": args.tasks,
        "service_ms": args.service_ms,
        "nodes": 3,
        "runs": runs,
        "exit_s_max": max(run["exit_s"] for run in runs),
        "all_exit_130": all(run["exit_code"] == 130 for run in runs),
        "any_traceback": any(run["traceback"] for run in runs),
        "unnamed_total": sum(run["unnamed"] for run in runs),
        "conditions": conditions(),
    }
    print(json.dumps(report))
    if not args.json:
        show_table(
            f"Ctrl-C on meshgpu submit ({args.tasks} tasks, 3 nodes, {args.service_ms} ms)",
            ["run", "SIGINT after", "exit s", "code", "traceback", "saved", "ids printed",
             "collected from ids", "unnamed"],
            [
                [i, r["interrupt_after"], r["exit_s"], r["exit_code"], r["traceback"],
                 r["saved"], r["ids_printed"], r["ids_printed_collected"], r["unnamed"]]
                for i, r in enumerate(runs)
            ],
        )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
