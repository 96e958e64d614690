"""The OpenCL engine's device memory per model: the table in docs/opencl-engine.md, *Memory*.

For each of the onnx package's architectures (seeded weights, batch 1), the launches of its
plan and the ONNX nodes of the seeded model, the activation buffers with liveness reuse and
without (every storage its own buffer), the uploaded weights, and the session's
``peak_device_bytes`` (weights plus the activation buffers) after one run. These are the
engine's own accounting: counted, not timed, so load does not change them.

Usage::

    python bench/plan_memory.py                       # the table's seven models
    python bench/plan_memory.py --models resnet50

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse

from meshgpu.inference.architectures import architecture_feeds, seeded_architecture
from meshgpu.inference.opencl import OpenCLSession

TABLE_MODELS = (
    "resnet50",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "shufflenet",
    "squeezenet",
    "bvlc_alexnet",
)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TABLE_MODELS))
    args = parser.parse_args()
    print(
        "| model (batch 1) | launches (ONNX nodes of the seeded model) "
        "| activation buffers with reuse | without reuse | weights | peak |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = seeded_architecture(name)
        feeds = architecture_feeds(model)
        session = OpenCLSession(model)
        session.run(feeds)
        stats = session.plan_statistics({n: a.shape for n, a in feeds.items()})
        print(
            f"| {name} | {stats['launches']} ({len(model.graph.node)}) "
            f"| {_mib(stats['activation_bytes'])} "
            f"| {_mib(stats['activation_bytes_without_reuse'])} "
            f"| {_mib(stats['weight_bytes'])} | {_mib(session.peak_device_bytes)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
