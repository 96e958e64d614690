"""Where a small model's OpenCL run goes: launches, kernel time, host time, and the device.

For each model and batch (the corpus of tests/data/corpus, or the digits model), one plan
is built on the session's OpenCL device (PoCL's threaded CPU device here) and one on its
in-thread twin when PoCL has one (docs/opencl-engine.md, *Small plans run inline*), both
with ``inline=False`` so each stays where it was built, then:

- ``launches``: kernel launches per run;
- ``kernel_us``: the sum over launches of each launch's device time on a profiling queue
  (the fastest of five runs per launch), on the threaded device;
- ``enqueue_us_per_launch``: host time to enqueue one launch (the run loop alone, median
  of the runs, no waiting);
- ``threaded_ms`` / ``inline_ms`` / ``onnxruntime_ms``: p50 wall time of a whole run
  (feeds up, launches, outputs down), the three timed in turns so load hits them alike;
- ``chosen``: the device an ordinary session picked for this plan when it was built.

Usage::

    python bench/opencl_launches.py                     # bert,gpt2,vit,convnext at 1 and 8
    python bench/opencl_launches.py --models gpt2 --batches 1 --rounds 50 --json

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyopencl as cl

from meshgpu.inference.corpus import corpus_feeds, load_corpus_model
from meshgpu.inference.devices import inline_companion
from meshgpu.inference.onnxruntime_backend import OnnxRuntimeSession
from meshgpu.inference.opencl import OpenCLSession
from meshgpu.inference.opencl.programs import default_device
from meshgpu.inference.opencl.tuning import alternating_medians_ms


def _kernel_us(session: OpenCLSession, feeds: dict[str, np.ndarray]) -> tuple[int, float]:
    """Launch count and summed per-launch device time of the feeds' plan."""
    plan = session._plan_for(session._check_feeds(feeds))
    queue = cl.CommandQueue(  # on the session's context: the kernels belong to it
        session._target.queue.context, properties=cl.command_queue_properties.PROFILING_ENABLE
    )
    best = [float("inf")] * len(plan.launches)
    for _ in range(5):
        session.run(feeds)  # feeds in place, as a run leaves them
        events = [
            cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size)
            for launch in plan.launches
        ]
        queue.finish()
        for index, event in enumerate(events):
            best[index] = min(best[index], (event.profile.end - event.profile.start) / 1000.0)
    return len(plan.launches), sum(best)


def _enqueue_us(session: OpenCLSession, feeds: dict[str, np.ndarray], runs: int) -> float:
    """Median host time to enqueue one launch of the plan (no wait inside the loop)."""
    plan = session._plan_for(session._check_feeds(feeds))
    queue = session._target.queue
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for launch in plan.launches:
            cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size)
        times.append((time.perf_counter() - started) * 1e6 / max(1, len(plan.launches)))
        queue.finish()
    return statistics.median(times)


def measure(name: str, batch: int, rounds: int) -> dict[str, Any]:
    model = load_corpus_model(name, seed=0)
    feeds = corpus_feeds(model, batch=batch, seed=1)
    device = default_device()
    companion = inline_companion(device)
    threaded = OpenCLSession(model, device=device, inline=False)
    threaded.run(feeds)
    launches, kernel_us = _kernel_us(threaded, feeds)
    enqueue_us = _enqueue_us(threaded, feeds, rounds)
    chosen = OpenCLSession(model, device=device)
    chosen.run(feeds)
    reference = OnnxRuntimeSession(model)
    runs: list[Callable[[], Any]] = [lambda: threaded.run(feeds), lambda: reference.run(feeds)]
    if companion is not None:
        inline = OpenCLSession(model, device=companion, inline=False)
        runs.append(lambda: inline.run(feeds))
    medians = alternating_medians_ms(runs, rounds)
    return {
        "model": name,
        "batch": batch,
        "launches": launches,
        "kernel_us": round(kernel_us, 1),
        "enqueue_us_per_launch": round(enqueue_us, 2),
        "threaded_ms": round(medians[0], 3),
        "inline_ms": round(medians[2], 3) if companion is not None else None,
        "onnxruntime_ms": round(medians[1], 3),
        "chosen": chosen.plan_device(feeds).name.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="bert,gpt2,vit,convnext")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=20, help="timed turns per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    results = [
        measure(name.strip(), int(batch), args.rounds)
        for name in args.models.split(",")
        for batch in args.batches.split(",")
    ]
    if args.json:
        print(json.dumps({"results": results}))
        return 0
    columns = list(results[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in results:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
