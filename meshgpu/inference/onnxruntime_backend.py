"""The onnxruntime backend: the reference the OpenCL executor is checked against, and the
fallback for models it cannot run.

It has the session interface the OpenCL executor has (``inputs``, ``outputs``, ``run``,
``peak_device_bytes``) so :func:`meshgpu.inference.load` can hand back either. Its "device"
is the host: ``peak_device_bytes`` is the process's peak resident memory during the last run
above what it held before the session was built (Linux ``/proc`` accounting, so it is an
estimate that counts anything else the process allocates meanwhile; 0 where ``/proc`` is
missing), taken on the runs with the most input bytes so far.

onnxruntime's Python API takes and returns no bfloat16 arrays (numpy has no such dtype;
the ``ml_dtypes`` one is refused). A model with bfloat16 inputs or outputs therefore runs
as a copy whose bfloat16 inputs are float32 ones cast to bfloat16 first, and whose
bfloat16 outputs are cast to float32 last: both casts are exact (every bfloat16 value is
a float32 value), and the arrays are converted back to bfloat16 here. Rejected: feeding
``OrtValue``s made from the raw 2-byte elements and reading outputs through their data
pointers (onnxruntime makes no ``OrtValue`` of a string array, so a model with both
kinds could not run, and the pointer read is unchecked memory access).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from meshgpu.errors import DeviceError, InferenceError, ModelError, UnsupportedOperatorError
from meshgpu.inference.model import InputSpec, graph_inputs
from meshgpu.tensor_types import bfloat16

_NOISE = re.compile(
    r"\[ONNXRuntimeError\] : \d+ : \w+ : "
    r"|/onnxruntime_src/\S+:\d+ [^()]*\((?:[^()]|\([^()]*\))*\)(?: const)? "
)
"""What onnxruntime puts around its message: the status code, and the C++ source line
and function signature of the check that failed (200 characters of ``std::`` types)."""


_OUT_OF_MEMORY = re.compile(r"allocat|bad_alloc|out of memory", re.IGNORECASE)
_NODE_FAULT = re.compile(
    r"CUDA|CUBLAS|CUDNN|cudnn|HIP failure|MIOPEN|ROCBLAS|TensorRT|pthread_create"
    r"|Resource temporarily unavailable|Too many open files"
)
"""Besides memory (``_OUT_OF_MEMORY``) and the status code ``EP_FAIL``, what says a
failed run was the node's, not the model's: threads or files it could not get, the
CUDA/ROCm libraries' own failures. Read in the message without the C++ signature (whose
types name allocators on checks that are the model's)."""


def readable(error: Exception) -> str:
    """onnxruntime's message of ``error`` on one line, without its status code and the
    C++ signature of the check that raised it (what a user can act on is the rest)."""
    return " ".join(_NOISE.sub("", str(error)).split())


_WIDENED_IN = "::float32-in"
_WIDENED_OUT = "::float32-out"
"""Suffixes of the float32 names a bfloat16 input or output gets in the session's copy
(two: a graph output may be one of its inputs)."""

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` style field of /proc/self/status in bytes (0 if unavailable)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class OnnxRuntimeSession:
    """An onnxruntime CPU session over a checked ``ModelProto``.

    Construction raises :class:`UnsupportedOperatorError` for operators onnxruntime does
    not implement and :class:`ModelError` for graphs it rejects; ``run`` expects feeds that
    :func:`meshgpu.inference.model.validate_feeds` has already checked.
    """

    backend = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, device: object | None = None) -> None:
        import onnxruntime

        del device  # the CPU provider is the only one this backend uses
        self.inputs: InputSpec = graph_inputs(model)
        self.outputs: list[str] = [output.name for output in model.graph.output]
        self.peak_device_bytes = 0
        self._baseline_rss = _status_bytes("VmRSS")
        self._measured_bytes = -1
        """Input bytes of the largest run whose peak was measured (see ``run``)."""
        model, self._widened_inputs, self._widened_outputs = _widen_bfloat16(model)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings about unused inputs are noise
        # The pool's threads sleep between runs instead of spinning: a node shares its cores
        # with the event loop, other tasks and the lab's own work, and a spinning pool
        # stole them (a 0.06 ms MatMul's p50 at concurrency 1 over HTTP: 18.7 ms spinning,
        # 12.8 ms not, on a loaded 2-core machine; docs/inference.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped pybind exceptions
            message = readable(error)
            if "NOT_IMPLEMENTED" in str(error) or "Could not find an implementation" in message:
                raise UnsupportedOperatorError(
                    f"onnxruntime cannot run this model: {message}"
                ) from error
            raise ModelError(f"onnxruntime rejected the model: {message}") from error

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns every output by name."""
        # The peak is measured on runs with more input bytes than any measured before
        # (the first run included): the /proc write and read cost about 0.1 ms, which
        # was half of a small model's run, and the same feed sizes give the same peak.
        size = sum(feed.nbytes for feed in feeds.values())
        measuring = size > self._measured_bytes and _reset_peak_rss()
        if measuring:
            self._measured_bytes = size
        names = self.outputs
        if self._widened_inputs or self._widened_outputs:
            feeds = {
                name + _WIDENED_IN if name in self._widened_inputs else name: (
                    array.astype(np.float32) if name in self._widened_inputs else array
                )
                for name, array in feeds.items()
            }
            names = [n + _WIDENED_OUT if n in self._widened_outputs else n for n in self.outputs]
        try:
            values: list[Any] = self._session.run(names, feeds)
        except Exception as error:  # onnxruntime's pybind exceptions have no public base
            raise run_failure(error) from error
        if measuring:
            peak = _status_bytes("VmHWM") - self._baseline_rss
            self.peak_device_bytes = max(self.peak_device_bytes, peak)
        outputs = {
            name: np.asarray(value) for name, value in zip(self.outputs, values, strict=True)
        }
        for name in self._widened_outputs:
            outputs[name] = outputs[name].astype(bfloat16())
        return outputs


def run_failure(error: Exception) -> InferenceError:
    """What a failed ``InferenceSession.run`` is, by whose fault (docs/inference.md):

    * the node's (:class:`DeviceError`, the task is tried on another node): the run could
      not get memory or threads, or the execution provider failed (``_NODE_FAULT``);
      memory is counted the node's even when the feeds ask for more than any node has
      (a few attempts, where a model's fault on a busy node must not fail the task);
    * the model's or its feeds' (:class:`ModelError`, the task fails with the reason): any
      other failure while running a node, a kernel refusing what the graph computed from
      these feeds (a Reshape to an impossible shape, an index out of bounds), which
      every node meets the same way (as the OpenCL executor says it);
    * onnxruntime's (:class:`InferenceError`, retried): a failure outside any node."""
    message = readable(error)
    if _OUT_OF_MEMORY.search(message):
        return DeviceError(f"onnxruntime ran out of memory: {message}")
    if ": EP_FAIL :" in str(error) or _NODE_FAULT.search(message):
        return DeviceError(f"onnxruntime's device failed while running: {message}")
    if "while running" in message and "node" in message:
        return ModelError(f"onnxruntime failed while running: {message}")
    return InferenceError(f"onnxruntime failed while running: {message}")


def _widen_bfloat16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str], set[str]]:
    """The model with each bfloat16 graph input and output widened to float32 by a Cast
    (see the module's docstring), and the names of the inputs and outputs widened; the
    model itself when it has none."""
    weights = {init.name for init in model.graph.initializer}

    def is_bf16(value: onnx.ValueInfoProto) -> bool:
        return value.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16

    inputs = {v.name for v in model.graph.input if v.name not in weights and is_bf16(v)}
    outputs = {v.name for v in model.graph.output if is_bf16(v)}
    if not inputs and not outputs:
        return model, inputs, outputs
    widened = onnx.ModelProto()
    widened.CopyFrom(model)
    graph = widened.graph
    casts_in = []
    for value in graph.input:
        if value.name in inputs:
            casts_in.append(
                onnx.helper.make_node(
                    "Cast", [value.name + _WIDENED_IN], [value.name], to=onnx.TensorProto.BFLOAT16
                )
            )
            value.name += _WIDENED_IN
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for value in graph.output:
        if value.name in outputs:
            graph.node.append(
                onnx.helper.make_node(
                    "Cast", [value.name], [value.name + _WIDENED_OUT], to=onnx.TensorProto.FLOAT
                )
            )
            value.name += _WIDENED_OUT
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    nodes = [*casts_in, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return widened, inputs, outputs
