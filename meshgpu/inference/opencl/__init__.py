"""meshgpu's ONNX graph executor on OpenCL.

Public names: :class:`OpenCLSession` (one model on one device) and
:func:`unsupported_operators` (what this backend cannot run, for ``backend="auto"``).
Everything else in this package is private machinery. See docs/opencl-engine.md.
"""

from meshgpu.inference.opencl.executor import OpenCLSession
from meshgpu.inference.opencl.graph import SUPPORTED_OPERATORS, unsupported_operators

__all__ = ["SUPPORTED_OPERATORS", "OpenCLSession", "unsupported_operators"]
