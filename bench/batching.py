"""Dynamic batching on one worker: concurrent single tasks with batching on and off, side by
side in one run.

    python bench/batching.py [--quick] [--json] [--tasks 64] [--per-caller 4]
                             [--max-batch 16] [--models squeezenet,digits]
                             [--backend opencl] [--rounds 3]

A worker's executor (meshgpu/daemon/execution.py, one slot, as ``meshgpu join --slots 1``)
gets ``--tasks`` runs of one model at once, each a single image, as a worker holding that
many assigned tasks does; each of the ``--tasks`` callers runs ``--per-caller`` tasks one
after the other, so the queue stays full. With batching on (the model's catalog settings:
``max_batch`` ``--max-batch``, no delay) the runs waiting for the device are concatenated
along the batch dimension; with batching off (``max_batch`` 1) each runs alone. Models:
SqueezeNet (onnx's light model, seeded weights, its batch dimension made symbolic) and
the shipped digits model. Reported per model and mode: tasks per second, p50 / p99
latency of a task (from its submission to the executor to its outputs), device runs and
the average batch; ratio = on / off (throughput: higher is better). Rounds alternate on
and off; the median is reported.

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import trio
from loopback import conditions, percentile, show_table

from meshgpu.core.catalog import Batching
from meshgpu.daemon.execution import Executor
from meshgpu.inference.architectures import seeded_architecture
from meshgpu.inference.model import SHIPPED_MODELS


def squeezenet(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """SqueezeNet with seeded weights and a symbolic batch dimension, and one image."""
    model = seeded_architecture("squeezenet", seed=0, batch=1, expose_logits=False)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, str(path))
    name = model.graph.input[0].name
    image = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return path, {name: image}


def digits() -> tuple[Path, dict[str, np.ndarray]]:
    path = SHIPPED_MODELS["digits"]
    with np.load(path.with_name("digits_test.npz")) as data:
        pixels = np.ascontiguousarray(data["pixels"][:1])
    return path, {"pixels": pixels}


async def one_round(
    path: Path,
    feeds: dict[str, np.ndarray],
    tasks: int,
    per_caller: int,
    batching: Batching,
    backend: str,
) -> dict[str, Any]:
    executor = Executor(1, backend=backend, batching_for=lambda digest: batching)
    digest = "bench-" + path.stem
    await executor.run(digest, path, feeds)  # warm: session built, kernels compiled
    for size in {1, min(tasks, batching.max_batch)}:  # the batch's plan built too
        batch = {k: np.repeat(v, size, axis=0) for k, v in feeds.items()}
        await executor.run(digest, path, batch)
    before = (executor.batch_counts.executions, executor.batch_counts.tasks)
    latencies: list[float] = []
    started = time.perf_counter()

    async def task() -> None:
        for _ in range(per_caller):
            began = time.perf_counter()
            await executor.run(digest, path, feeds)
            latencies.append(time.perf_counter() - began)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(task)
    elapsed = time.perf_counter() - started
    runs = executor.batch_counts.executions - before[0]
    done = executor.batch_counts.tasks - before[1]
    return {
        "tps": tasks * per_caller / elapsed,
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "device_runs": runs,
        "average_batch": done / runs if runs else 0.0,
        "backend": getattr(executor._sessions[digest].session, "backend", backend),
        # Whether batches ran faster per row than runs alone on this device (the
        # executor stops batching a model whose batches do not pay; None: not judged).
        "batching_pays": executor._sessions[digest].row_speed.pays,
        "row_ms_alone": executor._sessions[digest].row_speed.single_s * 1e3,
        "row_ms_batched": executor._sessions[digest].row_speed.batched_s * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round each")
    parser.add_argument("--json", action="store_true", help="end with the JSON object")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--per-caller", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="squeezenet,digits")
    parser.add_argument("--backend", default="opencl", choices=["opencl", "onnxruntime"])
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    report: dict[str, Any] = {
        "tasks": args.tasks,
        "max_batch": args.max_batch,
        "backend": args.backend,
        "conditions": [conditions()],
        "models": {},
        "ratio": {},
    }
    modes = {
        "on": Batching(args.max_batch, 0),
        "off": Batching(1, 0),
    }
    with tempfile.TemporaryDirectory(prefix="meshgpu-batching-") as root:
        for name in [m for m in args.models.split(",") if m]:
            if name == "squeezenet":
                path, feeds = squeezenet(Path(root) / "squeezenet.onnx")
            elif name == "digits":
                path, feeds = digits()
            else:
                parser.error(f"unknown model {name!r}: squeezenet or digits")
            results: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
            for index in range(rounds):
                order = ["on", "off"] if index % 2 == 0 else ["off", "on"]
                for mode in order:
                    result = trio.run(
                        one_round,
                        path,
                        feeds,
                        args.tasks,
                        args.per_caller,
                        modes[mode],
                        args.backend,
                    )
                    results[mode].append(result)
                    print(f"{name:10} {mode:3} {result}", file=sys.stderr)
            report["models"][name] = results
            report["ratio"][f"{name}_tps"] = statistics.median(
                r["tps"] for r in results["on"]
            ) / statistics.median(r["tps"] for r in results["off"])
    report["conditions"].append(conditions())
    rows = []
    for name, results in report["models"].items():
        for figure in ("tps", "p50_ms", "p99_ms", "average_batch"):
            on = statistics.median(r[figure] for r in results["on"])
            off = statistics.median(r[figure] for r in results["off"])
            rows.append((f"{name} {figure}", on, off, on / off if off else float("nan")))
    show_table(
        f"{args.tasks} concurrent single tasks on one worker ({args.backend}), "
        f"loadavg {report['conditions'][0]['loadavg']}",
        ["figure", f"batching on (max {args.max_batch})", "batching off", "on/off"],
        rows,
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
