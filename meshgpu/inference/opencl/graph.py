"""An ONNX model read into a small, checked, topologically ordered graph.

Everything here is host-side and happens before any device work: a broken graph raises
:class:`ModelError`, an operator this backend cannot run raises
:class:`UnsupportedOperatorError` naming op, opset and node. The executor never sees an
``onnx.NodeProto``: it sees :class:`Node` with attributes already decoded to Python values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes
from meshgpu.inference.opencl.functions import expand_functions

#: ONNX operators this backend runs, with the lowest default-domain opset whose semantics the
#: implementation follows. Versions before opset 7 are accepted where their semantics are a
#: subset of the current ones or are translated: the legacy ``broadcast``/``axis`` scheme of
#: binary arithmetic (:func:`legacy_broadcast_shape`), Reshape's ``shape`` attribute before 5,
#: BatchNormalization's ``spatial`` (only 1 is run), ``consumed_inputs`` (ignored).
SUPPORTED_OPERATORS: Mapping[str, int] = {
    "Abs": 1,
    "Acos": 7,
    "Acosh": 9,
    "Add": 1,
    "And": 7,
    "ArgMax": 1,
    "ArgMin": 1,
    "Asin": 7,
    "Asinh": 9,
    "Atan": 7,
    "Atanh": 9,
    "AveragePool": 1,
    "BatchNormalization": 1,
    "BitShift": 11,
    "BitwiseAnd": 18,
    "BitwiseNot": 18,
    "BitwiseOr": 18,
    "BitwiseXor": 18,
    "Cast": 6,
    "CastLike": 15,
    "Ceil": 1,
    "Celu": 12,
    "Clip": 1,
    "Concat": 1,
    "Constant": 1,
    "ConstantOfShape": 9,
    "Conv": 1,
    "ConvTranspose": 1,
    "Cos": 7,
    "Cosh": 9,
    "CumSum": 11,
    "DepthToSpace": 1,
    "Div": 1,
    "Dropout": 1,
    "Einsum": 12,
    "Elu": 1,
    "Equal": 7,
    "Erf": 9,
    "Exp": 1,
    "Expand": 8,
    "Flatten": 1,
    "Floor": 1,
    "Gather": 1,
    "GatherElements": 11,
    "GatherND": 11,
    "Gelu": 20,
    "Gemm": 1,
    "GlobalAveragePool": 1,
    "GlobalMaxPool": 1,
    "Greater": 7,
    "GreaterOrEqual": 12,
    "GroupNormalization": 18,
    "HardSigmoid": 1,
    "HardSwish": 14,
    "Identity": 1,
    "InstanceNormalization": 1,
    "IsInf": 10,
    "IsNaN": 9,
    "LayerNormalization": 17,
    "LeakyRelu": 1,
    "Less": 7,
    "LessOrEqual": 12,
    "Log": 1,
    "LogSoftmax": 1,
    "LRN": 1,
    "MatMul": 1,
    "Max": 1,
    "MaxPool": 1,
    "Mean": 1,
    "Min": 1,
    "Mish": 18,
    "Mod": 10,
    "Mul": 1,
    "Neg": 1,
    "Not": 1,
    "Or": 7,
    "Pad": 1,
    "Pow": 1,
    "PRelu": 7,
    "Range": 11,
    "Reciprocal": 1,
    "ReduceL1": 1,
    "ReduceL2": 1,
    "ReduceLogSum": 1,
    "ReduceLogSumExp": 1,
    "ReduceMax": 1,
    "ReduceMean": 1,
    "ReduceMin": 1,
    "ReduceProd": 1,
    "ReduceSum": 1,
    "ReduceSumSquare": 1,
    "Relu": 1,
    "Reshape": 1,
    "Resize": 10,
    "RMSNormalization": 23,
    "Round": 11,
    "ScatterElements": 11,
    "ScatterND": 11,
    "Selu": 1,
    "Shape": 1,
    "Shrink": 9,
    "Sigmoid": 1,
    "Sign": 9,
    "Sin": 7,
    "Sinh": 9,
    "Size": 1,
    "Slice": 1,
    "Softmax": 1,
    "Softplus": 1,
    "Softsign": 1,
    "SpaceToDepth": 1,
    "Split": 2,
    "Sqrt": 1,
    "Squeeze": 1,
    "Sub": 1,
    "Sum": 1,
    "Swish": 24,
    "Tan": 7,
    "Tanh": 1,
    "ThresholdedRelu": 10,
    "Tile": 6,
    "TopK": 1,
    "Transpose": 1,
    "Trilu": 14,
    "Unsqueeze": 1,
    "Upsample": 7,
    "Where": 9,
    "Xor": 7,
}

#: Highest default-domain opset accepted: the newest the installed ``onnx`` package defines.
#: The operator versions after 21 only add element types (bfloat16, float8, int4, ...), which
#: the type checks refuse by name, or attributes that only concern those types (Cast's
#: ``saturate`` and ``round_mode``); where a version changes semantics (Softmax at 13,
#: Reduce* axes as an input at 13/18, Split's ``num_outputs`` at 18, Pad's ``axes`` at 18)
#: the lowering and folding read the node's opset.
MAX_OPSET = int(onnx.defs.onnx_opset_version())


#: Operand positions that give a shape, axes, sizes or counts rather than data: a graph input
#: read only at such positions is planned on the host (its value is part of the plan's
#: signature, like an input shape), so shape arithmetic on it folds at plan time.
HOST_OPERANDS: Mapping[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 2, 3}),
    "Split": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    "TopK": frozenset({1}),
    "OneHot": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "CumSum": frozenset({1}),
    "Trilu": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceSumSquare": frozenset({1}),
    "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "ReduceLogSum": frozenset({1}),
    "ReduceLogSumExp": frozenset({1}),
    "Shape": frozenset(),
    "Size": frozenset(),
}


@dataclass(frozen=True)
class Node:
    """One ONNX node, attributes decoded; ``opset`` is the model's default-domain version."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    name: str
    opset: int

    def describe(self) -> str:
        """How error messages name this node."""
        return f"{self.op} (opset {self.opset}) node {self.name!r}"


@dataclass
class Graph:
    """A validated graph: nodes in execution order, runtime inputs, outputs, constants."""

    nodes: list[Node]
    inputs: dict[str, tuple[tuple[int | str, ...], np.dtype[Any]]]
    outputs: list[str]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 0
    #: Runtime inputs read only as shapes, axes or counts (see HOST_OPERANDS).
    host_inputs: frozenset[str] = frozenset()


def legacy_broadcast_shape(node: Node, a_rank: int, b_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The numpy-broadcast shape of operand B of a binary op before opset 7.

    With ``broadcast=1`` and ``axis``, B's dimensions line up with A's starting at ``axis``
    (ONNX Add-6 spec), so trailing ones are appended; otherwise numpy's suffix alignment
    already gives the same answer.
    """
    if node.opset >= 7 or not int(node.attrs.get("broadcast", 0)) or "axis" not in node.attrs:
        return b_shape
    axis = int(node.attrs["axis"])
    axis = axis + a_rank if axis < 0 else axis
    return (*b_shape, *([1] * (a_rank - axis - len(b_shape))))


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset version; raises ModelError if absent."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelError("the model imports no default-domain (ai.onnx) opset; it cannot be run")


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index} ({node.op_type} -> {', '.join(node.output)})"


def unsupported_operators(model: onnx.ModelProto) -> list[tuple[str, int, str]]:
    """(op_type, opset, node name) of every node this backend cannot run, in graph order."""
    try:
        opset = default_opset(model)
    except ModelError:
        opset = 0
    model = expand_functions(model, opset, lambda node: _is_supported(node, opset))
    found: list[tuple[str, int, str]] = []
    non_device = _non_device_inputs(model)
    for index, node in enumerate(model.graph.node):
        typed = list(dict.fromkeys(name for name in node.input if name in non_device))
        if not _is_supported(node, opset) or typed:
            domain_opset = opset
            if node.domain not in ("", "ai.onnx"):
                domain_opset = next(
                    (int(e.version) for e in model.opset_import if e.domain == node.domain), 0
                )
            label = _node_label(node, index)
            if typed and _is_supported(node, opset):
                # The op is supported; its input's type is not: say which, and why.
                label += (
                    "; "
                    + ", ".join(f"input {name!r} is {non_device[name]}" for name in typed)
                    + ", which is not a device type"
                )
            found.append((node.op_type, domain_opset, label))
    return found


def _non_device_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Runtime graph inputs whose element type no device tensor holds (float16, strings,
    ...; see :mod:`.dtypes`), with the type's name."""
    initializers = {i.name for i in model.graph.initializer}
    found: dict[str, str] = {}
    for value in model.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        elem_type = value.type.tensor_type.elem_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        except (KeyError, ValueError):
            dtype = None
        if dtype is None or not dtypes.is_device_type(dtype):
            found[value.name] = onnx.TensorProto.DataType.Name(elem_type).lower()
    return found


def _is_supported(node: onnx.NodeProto, opset: int) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    minimum = SUPPORTED_OPERATORS.get(node.op_type)
    return minimum is not None and minimum <= opset <= MAX_OPSET


def _decode_attribute(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def _tensor_type(value: onnx.ValueInfoProto) -> tuple[tuple[int | str, ...], np.dtype[Any]]:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise UnsupportedOperatorError(
            f"graph input {value.name!r} is not a tensor; the OpenCL backend runs tensors only"
        )
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, ValueError) as error:
        raise ModelError(f"graph input {value.name!r} has unknown element type") from error
    dims: list[int | str] = []
    for index, dim in enumerate(tensor.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or f"{value.name}_dim{index}")
    return tuple(dims), dtype


def read_graph(model: onnx.ModelProto) -> Graph:
    """Check ``model`` and return its graph in execution order.

    Raises UnsupportedOperatorError (first unsupported node: op, opset, node name) or
    ModelError (no opset, a tensor used before any node produces it, a cycle, an output
    nobody produces).
    """
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    opset = default_opset(model)
    model = expand_functions(model, opset, lambda node: _is_supported(node, opset))
    unsupported = unsupported_operators(model)
    non_device = _non_device_inputs(model)
    for index, node in enumerate(model.graph.node):
        read = sorted(set(non_device).intersection(node.input))
        if read and _is_supported(node, opset):
            raise UnsupportedOperatorError(
                f"the OpenCL backend cannot run {node.op_type} (opset {opset}) at node "
                f"{_node_label(node, index)!r}: it reads input {read[0]!r} of type "
                f"{non_device[read[0]]}, which is not a device type; use "
                "backend='onnxruntime' or allow fallback"
            )
    if unsupported:
        op, op_opset, name = unsupported[0]
        more = (
            f" (and {len(unsupported) - 1} more unsupported nodes)" if len(unsupported) > 1 else ""
        )
        raise UnsupportedOperatorError(
            f"the OpenCL backend cannot run operator {op} (opset {op_opset}) at node {name!r}"
            f"{more}; use backend='onnxruntime' or allow fallback"
        )
    graph = model.graph
    constants: dict[str, np.ndarray] = {}
    for initializer in graph.initializer:
        try:
            constants[initializer.name] = numpy_helper.to_array(initializer)
        except Exception as error:  # onnx raises bare Exception types for corrupt tensors
            raise ModelError(f"initializer {initializer.name!r} cannot be read: {error}") from error
    inputs = {
        value.name: _tensor_type(value) for value in graph.input if value.name not in constants
    }
    nodes = [
        Node(
            op=node.op_type,
            inputs=tuple(node.input),
            outputs=tuple(node.output),
            attrs={a.name: _decode_attribute(a) for a in node.attribute},
            name=_node_label(node, index),
            opset=opset,
        )
        for index, node in enumerate(graph.node)
    ]
    ordered = _topological_order(nodes, set(inputs) | set(constants))
    outputs = [value.name for value in graph.output]
    produced = set(inputs) | set(constants) | {o for n in nodes for o in n.outputs if o}
    for name in outputs:
        if name not in produced:
            raise ModelError(f"graph output {name!r} is produced by no node, input or initializer")
    return Graph(
        nodes=ordered,
        inputs=inputs,
        outputs=outputs,
        constants=constants,
        opset=opset,
        host_inputs=_host_inputs(ordered, inputs, set(outputs)),
    )


def _host_inputs(
    nodes: list[Node], inputs: Mapping[str, tuple[Any, np.dtype[Any]]], outputs: set[str]
) -> frozenset[str]:
    """Graph inputs that every reader takes at a HOST_OPERANDS position."""
    found = set()
    for name in inputs:
        if name in outputs:
            continue
        positions = [
            (node.op, position)
            for node in nodes
            for position, read in enumerate(node.inputs)
            if read == name
        ]
        if positions and all(
            position in HOST_OPERANDS.get(op, frozenset()) for op, position in positions
        ):
            found.add(name)
    return frozenset(found)


def _topological_order(nodes: list[Node], available: set[str]) -> list[Node]:
    """Kahn's algorithm, stable with respect to the file order."""
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for output in node.outputs:
            if not output:
                continue
            if output in producer or output in available:
                raise ModelError(f"tensor {output!r} is produced twice (again by {node.name!r})")
            producer[output] = index
    waiting_on: list[set[int]] = []
    dependants: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        needs: set[int] = set()
        for name in node.inputs:
            if not name or name in available:
                continue
            if name not in producer:
                raise ModelError(
                    f"node {node.name!r} reads {name!r}, which no node, input or initializer "
                    "provides; the model is broken or truncated"
                )
            needs.add(producer[name])
        waiting_on.append(needs)
        for source in needs:
            dependants.setdefault(source, []).append(index)
    ready = [i for i, needs in enumerate(waiting_on) if not needs]
    order: list[int] = []
    import heapq

    heapq.heapify(ready)
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for dependant in dependants.get(index, []):
            waiting_on[dependant].discard(index)
            if not waiting_on[dependant]:
                heapq.heappush(ready, dependant)
    if len(order) != len(nodes):
        stuck = next(nodes[i].name for i, needs in enumerate(waiting_on) if needs)
        raise ModelError(f"the graph has a cycle (node {stuck!r} waits on itself)")
    return [nodes[i] for i in order]
