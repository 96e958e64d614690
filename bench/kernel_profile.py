"""Device time per kernel of one model's OpenCL plan, measured on a profiling queue.

Builds the plan for the model at the given batch, runs every launch of it on a queue with
profiling enabled (one warm-up pass, then ``--repeats`` passes), and reports for each
launch the best device time over the passes (``end - start`` of its event), grouped by the
operator of the node it belongs to and by kernel: where an inference's device time goes and
how many launches it takes. Wall-clock overheads (waking PoCL's threads per command, the
host's waits) are not in these figures: they are what bench/inference.py measures.

Usage::

    python bench/kernel_profile.py convnext              # batch 1, table
    python bench/kernel_profile.py unet --batch 8 --json

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import pyopencl as cl

from meshgpu.inference.architectures import ARCHITECTURES, architecture_feeds, seeded_architecture
from meshgpu.inference.corpus import CORPUS_MODELS, corpus_feeds, load_corpus_model
from meshgpu.inference.opencl.executor import OpenCLSession


def _model(name: str, batch: int) -> tuple[Any, dict[str, np.ndarray]]:
    if name in CORPUS_MODELS:
        model = load_corpus_model(name)
        return model, corpus_feeds(model, batch)
    if name in ARCHITECTURES:
        model = seeded_architecture(name, batch=batch)
        return model, architecture_feeds(model)
    raise SystemExit(f"unknown model {name!r}: one of {CORPUS_MODELS + tuple(ARCHITECTURES)}")


def profile(name: str, batch: int, repeats: int) -> dict[str, Any]:
    """Per-launch best device times (microseconds) of ``name``'s plan at ``batch``."""
    model, feeds = _model(name, batch)
    session = OpenCLSession(model)
    session.run(feeds)  # builds the plan (and tunes it), compiles, warms the caches
    plan = next(iter(session._plans.values()))
    ops = {node.name: node.op for node in session._graph.nodes}
    queue = cl.CommandQueue(
        programs_context(session), properties=cl.command_queue_properties.PROFILING_ENABLE
    )
    best = [float("inf")] * len(plan.launches)
    for attempt in range(repeats + 1):
        events = [
            cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size)
            for launch in plan.launches
        ]
        queue.finish()
        if attempt == 0:
            continue  # warm-up
        for index, event in enumerate(events):
            best[index] = min(best[index], (event.profile.end - event.profile.start) / 1000.0)
    launches = [
        {
            "node": launch.node,
            "op": ops.get(launch.node, "?"),
            "kernel": launch.kernel_name,
            "grid": list(launch.global_size),
            "local": list(launch.local_size),
            "us": round(best[index], 1),
        }
        for index, launch in enumerate(plan.launches)
    ]
    by_op: dict[str, list[float]] = defaultdict(list)
    for entry in launches:
        by_op[f"{entry['op']} / {entry['kernel']}"].append(entry["us"])
    return {
        "model": name,
        "batch": batch,
        "launches": len(launches),
        "total_us": round(sum(best), 1),
        "by_kernel": {
            key: {"count": len(times), "us": round(sum(times), 1)}
            for key, times in sorted(by_op.items(), key=lambda item: -sum(item[1]))
        },
        "per_launch": launches,
    }


def programs_context(session: OpenCLSession) -> cl.Context:
    """The context of the device the session's plan was built for (on PoCL's CPU a small
    plan may run on the in-thread twin: docs/opencl-engine.md, *Small plans run inline*)."""
    from meshgpu.inference.opencl import programs

    plan = next(iter(session._plans.values()))
    return programs.context_for(plan.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="slowest launches listed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = profile(args.model, args.batch, args.repeats)
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return 0
    print(
        f"{result['model']} batch {result['batch']}: {result['launches']} launches, "
        f"{result['total_us'] / 1000:.2f} ms device time (best of {args.repeats} per launch)"
    )
    print(f"{'operator / kernel':60} {'count':>6} {'ms':>8} {'share':>6}")
    for key, entry in result["by_kernel"].items():
        share = entry["us"] / max(result["total_us"], 1e-9)
        print(f"{key:60} {entry['count']:6d} {entry['us'] / 1000:8.3f} {share:6.1%}")
    print(f"\nslowest {args.top} launches:")
    for entry in sorted(result["per_launch"], key=lambda e: -e["us"])[: args.top]:
        print(
            f"  {entry['us'] / 1000:8.3f} ms  {entry['op']:12} {entry['kernel']:28} "
            f"grid {entry['grid']} local {entry['local']}  {entry['node']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
