"""meshgpu's OpenCL executor as an ``onnx.backend.base.Backend``, for onnx's own test suites.

``onnx.backend.test.BackendTest`` drives any backend through the model cases the onnx
package ships. Here ``prepare`` builds an :class:`OpenCLSession`; a model with an operator
the executor does not implement is skipped with the operator, its opset and its node named
(``unittest.SkipTest``; at the first run for a model planned per input value), so the
suite's outcome is exactly: passed, or skipped for a named
operator, or a real failure.
"""

from __future__ import annotations

import unittest
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from meshgpu.errors import UnsupportedOperatorError
from meshgpu.inference.devices import default_device, opencl_device
from meshgpu.inference.opencl import OpenCLSession, unsupported_operators


class MeshgpuRep(BackendRep):
    """A prepared model: runs positional inputs in graph-input order."""

    def __init__(self, session: OpenCLSession, input_names: list[str]) -> None:
        self.session = session
        self.input_names = input_names

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            values = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
            feeds = dict(zip(self.input_names, values, strict=False))
        feeds = {name: value for name, value in feeds.items() if name in self.session.inputs}
        try:
            results = self.session.run({name: np.asarray(value) for name, value in feeds.items()})
        except UnsupportedOperatorError as error:
            # a model whose plan depends on input values is planned at its first run
            raise unittest.SkipTest(f"unsupported: {error}") from error
        return tuple(results[name] for name in self.session.outputs)


class MeshgpuBackend(Backend):
    """OpenCL on the default OpenCL device (PoCL's CPU device on a bare install)."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return True  # incompatibility is reported by prepare, with the operator named

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> MeshgpuRep:
        unsupported = unsupported_operators(model)
        if unsupported:
            raise unittest.SkipTest(
                "unsupported operator(s): "
                + ", ".join(
                    f"{op} (opset {opset}, node {node!r})" for op, opset, node in unsupported
                )
            )
        try:
            session = OpenCLSession(model, device=opencl_device(default_device("opencl")))
        except UnsupportedOperatorError as error:
            raise unittest.SkipTest(f"unsupported: {error}") from error
        initialized = {tensor.name for tensor in model.graph.initializer}
        names = [value.name for value in model.graph.input if value.name not in initialized]
        return MeshgpuRep(session, names)

    @classmethod
    def run_model(
        cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
