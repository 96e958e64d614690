"""meshgpu's inference engine: run an ONNX model on this machine's OpenCL devices.

The public surface (the daemon, the CLI and the tests use exactly this)::

    from meshgpu import inference

    inference.devices()                      # every OpenCL device, then onnxruntime's CPU
    inference.verdict(device)                # probed: .usable, .problem, .advice, .probe_ms
    session = inference.load("digits")       # a path, bytes, a ModelProto, or "digits"
    session.backend, session.backend_reason  # which backend "auto" chose, and why
    session.inputs                           # {"pixels": (("N", 64), dtype("float32"))}
    session.run({"pixels": batch})           # {"probabilities": array [N, 10]}

Everything else (the OpenCL executor in :mod:`meshgpu.inference.opencl`, the onnxruntime
backend, the model checks) is private machinery that may change. This package imports
nothing from ``meshgpu.core`` or ``meshgpu.daemon``.
"""

from meshgpu.errors import (
    DeviceError,
    InferenceError,
    InputError,
    ModelError,
    UnsupportedOperatorError,
)
from meshgpu.inference.devices import DeviceInfo, devices, select_device
from meshgpu.inference.model import (
    SHIPPED_MODELS,
    LoadedModel,
    load_model,
    validate_feeds,
)
from meshgpu.inference.probe import DeviceVerdict, verdict, verdicts
from meshgpu.inference.session import Session, load

__all__ = [
    "SHIPPED_MODELS",
    "DeviceError",
    "DeviceInfo",
    "DeviceVerdict",
    "InferenceError",
    "InputError",
    "LoadedModel",
    "ModelError",
    "Session",
    "UnsupportedOperatorError",
    "devices",
    "load",
    "load_model",
    "select_device",
    "validate_feeds",
    "verdict",
    "verdicts",
]
