"""The onnxruntime backend: the reference the OpenCL executor is checked against, and the
fallback for models it cannot run.

It has the session interface the OpenCL executor has (``inputs``, ``outputs``, ``run``,
``peak_device_bytes``) so :func:`meshgpu.inference.load` can hand back either. Its "device"
is the host: ``peak_device_bytes`` is the process's peak resident memory during the last run
above what it held before the session was built (Linux ``/proc`` accounting, so it is an
estimate that counts anything else the process allocates meanwhile; 0 where ``/proc`` is
missing), taken on the runs with the most input bytes so far.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from meshgpu.errors import DeviceError, InferenceError, ModelError, UnsupportedOperatorError
from meshgpu.inference.model import InputSpec, graph_inputs

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
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings about unused inputs are noise
        try:
            self._session = onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped pybind exceptions
            message = str(error)
            if "NOT_IMPLEMENTED" in message or "Could not find an implementation" in message:
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
        try:
            values: list[Any] = self._session.run(self.outputs, feeds)
        except Exception as error:  # onnxruntime's pybind exceptions have no public base
            message = str(error)
            if "allocat" in message.lower() or "bad_alloc" in message:
                raise DeviceError(f"onnxruntime ran out of memory: {message}") from error
            raise InferenceError(f"onnxruntime failed while running: {message}") from error
        if measuring:
            peak = _status_bytes("VmHWM") - self._baseline_rss
            self.peak_device_bytes = max(self.peak_device_bytes, peak)
        return {name: np.asarray(value) for name, value in zip(self.outputs, values, strict=True)}
