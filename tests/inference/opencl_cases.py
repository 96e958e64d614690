"""Shared helpers for the OpenCL engine tests: one-node (or small) models checked against
``onnx.reference``, the ONNX spec's own Python evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str],
    *,
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    input_shapes: dict[str, Sequence[int | str]] | None = None,
) -> onnx.ModelProto:
    """A model whose graph inputs are ``inputs`` and constants are ``initializers``."""
    initializers = initializers or {}
    input_shapes = input_shapes or {}
    graph = helper.make_graph(
        list(nodes),
        "case",
        [
            helper.make_tensor_value_info(
                name,
                helper.np_dtype_to_tensor_dtype(array.dtype),
                list(input_shapes.get(name, array.shape)),
            )
            for name, array in inputs.items()
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[numpy_helper.from_array(v, name) for name, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def reference(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], oracle: str = "reference"
) -> list[np.ndarray]:
    """Expected outputs from ``onnx.reference`` or, where that evaluator departs from the
    spec (Softmax before opset 13 uses the opset-13 axis rule; LRN; BatchNormalization
    before opset 14), from onnxruntime."""
    if oracle == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return [np.asarray(v) for v in session.run(None, feeds)]
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """The conformance criterion: max abs error <= 1e-4 * max(1, max |expected|)."""
    expected = np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.size == 0:
        return
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(actual.astype(np.float64) - expected).max())
    assert error <= tolerance, f"{what}: max abs error {error:.3g} > {tolerance:.3g}"


def check_against_reference(
    session_factory: Any,
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str],
    oracle: str = "reference",
    **model_options: Any,
) -> None:
    """Run the model on OpenCL and on the oracle; every output must match."""
    model = make_model(nodes, inputs, outputs, **model_options)
    expected = reference(model, inputs, oracle)
    got = session_factory(model).run(inputs)
    for name, want in zip(outputs, expected, strict=True):
        assert_close(got[name], want, name)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)
