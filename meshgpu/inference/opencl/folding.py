"""Plan-time evaluation of nodes whose inputs are all known on the host.

Weights built by ``ConstantOfShape``/``Constant`` nodes, shape arithmetic
(``Shape -> Gather -> Concat -> Unsqueeze -> Reshape``) and anything else computed only from
constants is evaluated here with numpy once, while the plan is built, so no kernel ever runs
for it. The common operators have direct numpy code; anything else falls back to
``onnx.reference`` on a one-node model, which follows the ONNX spec by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from meshgpu.errors import ModelError
from meshgpu.inference.opencl.graph import Node, legacy_broadcast_shape

Folder = Callable[[Node, list[np.ndarray | None]], list[np.ndarray]]


def _axes(node: Node, values: Sequence[np.ndarray | None], rank: int) -> list[int]:
    """Squeeze/Unsqueeze axes (attribute before opset 13, input from 13), made non-negative."""
    raw: Any
    if node.opset >= 13:
        raw = [] if len(values) < 2 or values[1] is None else np.asarray(values[1]).reshape(-1)
    else:
        raw = node.attrs.get("axes", [])
    axes = [int(a) for a in raw]
    if node.op == "Unsqueeze":
        rank += len(axes)
    return sorted(a + rank if a < 0 else a for a in axes)


def _constant(node: Node, _: list[np.ndarray | None]) -> list[np.ndarray]:
    attrs = node.attrs
    if "value" in attrs:
        return [np.asarray(attrs["value"])]
    for key, dtype in (
        ("value_float", np.float32),
        ("value_int", np.int64),
        ("value_floats", np.float32),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return [np.asarray(attrs[key], dtype=dtype)]
    raise ModelError(f"{node.describe()} has no value attribute this backend understands")


def _constant_of_shape(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    shape = [int(d) for d in np.asarray(values[0]).reshape(-1)]
    fill = node.attrs.get("value")
    if fill is None:
        return [np.zeros(shape, dtype=np.float32)]
    fill = np.asarray(fill).reshape(-1)
    return [np.full(shape, fill[0], dtype=fill.dtype)]


def _shape(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    shape = np.asarray(np.shape(np.asarray(values[0])), dtype=np.int64)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return [shape[start : None if end is None else int(end)]]


def _unsqueeze(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    result = np.asarray(values[0])
    for axis in _axes(node, values, result.ndim):
        result = np.expand_dims(result, axis)
    return [result]


def _squeeze(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    data = np.asarray(values[0])
    axes = _axes(node, values, data.ndim)
    return [np.squeeze(data, axis=tuple(axes)) if axes else np.squeeze(data)]


def _gather(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    data, indices = np.asarray(values[0]), np.asarray(values[1])
    axis = int(node.attrs.get("axis", 0))
    return [np.take(data, indices.astype(np.int64), axis=axis, mode="wrap")]


def _gather_elements(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    """numpy's take_along_axis over the index-shaped corner of the data (onnx.reference's
    GatherElements fails when the data is larger than the indices off the axis)."""
    data, indices = np.asarray(values[0]), np.asarray(values[1]).astype(np.int64)
    axis = int(node.attrs.get("axis", 0)) % data.ndim
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    corner = tuple(
        slice(None) if d == axis else slice(0, size) for d, size in enumerate(indices.shape)
    )
    return [np.take_along_axis(data[corner], indices, axis=axis)]


def _concat(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    arrays = [np.asarray(v) for v in values if v is not None]
    return [np.concatenate(arrays, axis=int(node.attrs["axis"]))]


def _cast(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    return [np.asarray(values[0]).astype(dtype)]


def _binary(function: Callable[[Any, Any], Any]) -> Folder:
    def fold(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
        a, b = np.asarray(values[0]), np.asarray(values[1])
        b = b.reshape(legacy_broadcast_shape(node, a.ndim, b.shape))
        return [np.asarray(function(a, b)).astype(np.result_type(a, b))]

    return fold


def _integer_aware_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return np.asarray(np.trunc(a / b)).astype(np.result_type(a, b))
    return np.asarray(a / b)


FOLDERS: dict[str, Folder] = {
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Shape": _shape,
    "Size": lambda _, values: [np.asarray(np.asarray(values[0]).size, dtype=np.int64)],
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "Concat": _concat,
    "Cast": _cast,
    "Identity": lambda _, values: [np.asarray(values[0])],
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_integer_aware_divide),
}


def fold_node(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    """Evaluate ``node`` on host values; returns one array per declared output."""
    folder = FOLDERS.get(node.op)
    if folder is not None:
        return folder(node, values)
    return _fold_with_reference(node, values)


def _fold_with_reference(node: Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    input_names = [f"in{i}" if v is not None else "" for i, v in enumerate(values)]
    output_names = [f"out{i}" if o else "" for i, o in enumerate(node.outputs)]
    proto = onnx.helper.make_node(node.op, input_names, output_names, name="fold")
    for key, value in node.attrs.items():
        if isinstance(value, np.ndarray):
            proto.attribute.append(onnx.helper.make_attribute(key, numpy_helper.from_array(value)))
        else:
            proto.attribute.append(onnx.helper.make_attribute(key, value))
    feeds = {name: v for name, v in zip(input_names, values, strict=True) if name}
    graph = onnx.helper.make_graph(
        [proto],
        "fold",
        [
            onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(feeds[name]).dtype), None
            )
            for name in feeds
        ],
        [
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
            for n in output_names
            if n
        ],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", node.opset)])
    results = ReferenceEvaluator(model).run(None, feeds)
    outputs = iter(results)
    return [np.asarray(next(outputs)) if name else np.zeros(0) for name in output_names]
