"""Dynamic batching on one worker: concurrent single tasks with batching on and off, side by
side in one run.

    python bench/batching.py [--quick] [--json] [--tasks 64] [--per-caller 4]
                             [--max-batch 16] [--models squeezenet,digits]
                             [--devices all] [--rounds 3]

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

Devices: ``--devices all`` (the default) measures every device this machine has that
passed its probe (``meshgpu devices``): each OpenCL device (a GPU's is the case batching is
for) and onnxruntime's CPU, one after the other, each with its own ratios (JSON
``ratio["<device id>"]["<model>_tps"]``; the goal for SqueezeNet on a GPU is 1.5 or more).
``--devices opencl:0,onnxruntime:cpu`` picks some (ids or name pieces, as ``--device``).

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
from meshgpu.inference import DeviceInfo
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
    device: DeviceInfo,
) -> dict[str, Any]:
    executor = Executor(
        1, backend=device.backend, device=device.id, batching_for=lambda digest: batching
    )
    digest = "bench-" + path.stem
    await executor.run(digest, path, feeds)  # warm: session built, kernels compiled
    # Every batch size the executor may gather (powers of two up to the largest batch)
    # gets its plan built before the clock starts: plan building is not batching's cost.
    largest = min(tasks, batching.max_batch)
    sizes = {1 << shift for shift in range(largest.bit_length()) if 1 << shift <= largest}
    for size in sorted(sizes | {largest}):
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
        "backend": getattr(executor._sessions[digest].session, "backend", device.backend),
        # Whether batches ran faster per row than runs alone on this device (the
        # executor stops batching a model whose batches do not pay; None: not judged).
        "batching_pays": executor._sessions[digest].row_speed.pays,
        "row_ms_alone": executor._sessions[digest].row_speed.single_s * 1e3,
        "row_ms_batched": executor._sessions[digest].row_speed.batched_s * 1e3,
    }


def chosen_devices(text: str) -> list[DeviceInfo]:
    """``all``: every device that passed its probe; else the comma-separated ids."""
    from meshgpu import inference

    if text != "all":
        return [inference.select_device(item) for item in text.split(",") if item]
    usable = []
    for device in inference.devices():
        verdict = inference.verdict(device)
        if verdict.usable:
            usable.append(device)
        else:
            print(f"skipping {device.id} ({device.name}): {verdict.problem}", file=sys.stderr)
    return usable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round each")
    parser.add_argument("--json", action="store_true", help="end with the JSON object")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--per-caller", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="squeezenet,digits")
    parser.add_argument(
        "--devices",
        default="all",
        help="'all' (every usable device: OpenCL ones and onnxruntime's CPU) or ids, "
        "comma-separated (opencl:0, opencl:nvidia, onnxruntime:cpu)",
    )
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    devices = chosen_devices(args.devices)
    report: dict[str, Any] = {
        "tasks": args.tasks,
        "max_batch": args.max_batch,
        "devices": {device.id: f"{device.name} ({device.type})" for device in devices},
        "conditions": [conditions()],
        "models": {},
        "ratio": {},
    }
    modes = {
        "on": Batching(args.max_batch, 0),
        "off": Batching(1, 0),
    }
    names = [m for m in args.models.split(",") if m]
    for name in names:
        if name not in ("squeezenet", "digits"):
            parser.error(f"unknown model {name!r}: squeezenet or digits")
    rows = []
    with tempfile.TemporaryDirectory(prefix="meshgpu-batching-") as root:
        for device in devices:
            report["models"][device.id] = {}
            report["ratio"][device.id] = {}
            for name in names:
                if name == "squeezenet":
                    path, feeds = squeezenet(Path(root) / "squeezenet.onnx")
                else:
                    path, feeds = digits()
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
                            device,
                        )
                        results[mode].append(result)
                        print(f"{device.id} {name:10} {mode:3} {result}", file=sys.stderr)
                report["models"][device.id][name] = results
                report["ratio"][device.id][f"{name}_tps"] = statistics.median(
                    r["tps"] for r in results["on"]
                ) / statistics.median(r["tps"] for r in results["off"])
                for figure in ("tps", "p50_ms", "p99_ms", "average_batch"):
                    on = statistics.median(r[figure] for r in results["on"])
                    off = statistics.median(r[figure] for r in results["off"])
                    ratio = on / off if off else float("nan")
                    rows.append((f"{device.id} {name} {figure}", on, off, ratio))
    report["conditions"].append(conditions())
    show_table(
        f"{args.tasks} concurrent single tasks on one worker, each device in turn "
        f"({', '.join(report['devices'].values())}), "
        f"loadavg {report['conditions'][0]['loadavg']}",
        ["device, model, figure", f"batching on (max {args.max_batch})", "batching off", "on/off"],
        rows,
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
