"""Operators the ONNX standard defines as functions, expanded into their bodies.

Many newer operators (Attention, RotaryEmbedding, the losses, CenterCropPad, ...) come with
a *function body* in their schema: a subgraph of simpler operators that is their
definition. An operator the executor has no lowering for, but whose schema has such a
body for the model's opset, is replaced by that body before the graph is read, exactly as
the onnx package's own "expanded" test models are built: the body's inputs and outputs
take the node's tensor names, its internal tensors get a per-node prefix, attribute
references take the node's attributes (or the schema's defaults). Bodies whose shape
depends on input types (context-dependent functions) get the types from onnx's shape
inference. Expansion repeats until no expandable node is left (a body may use another
function operator). Operators with a native lowering are never expanded: a lowering is
faster than its body (LayerNormalization is one kernel, its body nine).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import onnx
from onnx import AttributeProto, FunctionProto, NodeProto

#: Expansion rounds before giving up (a body using a function operator that uses another).
_MAX_ROUNDS = 4


def _schema(node: NodeProto, opset: int) -> onnx.defs.OpSchema | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return None


def _body(
    node: NodeProto,
    opset: int,
    types: Callable[[], Mapping[str, onnx.TypeProto]],
) -> FunctionProto | None:
    """The function body defining ``node`` at ``opset``, or None."""
    # onnx's type stubs do not declare OpSchema's function accessors, which it has had
    # since 1.15; Any rather than an ignore per use
    schema: Any = _schema(node, opset)
    if schema is None:
        return None
    versions = [v for v in schema.function_opset_versions if v <= opset]
    function = FunctionProto()
    if versions:
        function.ParseFromString(schema.get_function_with_opset_version(max(versions)))
        return function
    versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if not versions:
        return None
    known = types()
    input_types = []
    for name in node.input:
        if name and name not in known:
            return None
        input_types.append(known[name].SerializeToString() if name else b"")
    try:
        serialized = schema.get_context_dependent_function_with_opset_version(
            max(versions), node.SerializeToString(), input_types
        )
    except Exception:  # onnx raises plain exceptions for types a body does not cover
        return None
    if not serialized:
        return None
    function.ParseFromString(serialized)
    return function


def _expand(node: NodeProto, function: FunctionProto, prefix: str, opset: int) -> list[NodeProto]:
    """``function``'s nodes with the node's names and attributes substituted."""
    attributes = {a.name: a for a in node.attribute}
    schema = _schema(node, opset)
    if schema is not None:
        for name, attribute in schema.attributes.items():
            if name not in attributes and attribute.default_value.name:
                attributes[name] = attribute.default_value
    for default in function.attribute_proto:
        attributes.setdefault(default.name, default)
    names: dict[str, str] = {}
    for position, name in enumerate(function.input):
        names[name] = node.input[position] if position < len(node.input) else ""
    for position, name in enumerate(function.output):
        if position < len(node.output) and node.output[position]:
            names[name] = node.output[position]

    def rename(name: str) -> str:
        if not name:
            return ""
        return names.get(name, prefix + name)

    expanded = []
    for inner in function.node:
        copy = NodeProto()
        copy.CopyFrom(inner)
        copy.ClearField("input")
        copy.ClearField("output")
        copy.ClearField("attribute")
        copy.input.extend(rename(n) for n in inner.input)
        copy.output.extend(rename(n) for n in inner.output)
        copy.name = prefix + (inner.name or inner.op_type)
        for attribute in inner.attribute:
            if attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                return []  # subgraphs (If, Loop, Scan) are not run by this backend anyway
            if attribute.HasField("ref_attr_name"):
                if attribute.ref_attr_name in attributes:
                    value = AttributeProto()
                    value.CopyFrom(attributes[attribute.ref_attr_name])
                    value.name = attribute.name
                    copy.attribute.append(value)
            else:
                copy.attribute.append(attribute)
        expanded.append(copy)
    return expanded


def _lazy_types(model: onnx.ModelProto) -> Callable[[], Mapping[str, onnx.TypeProto]]:
    """A callable giving every tensor's type (onnx shape inference), computed on first use:
    only context-dependent bodies need it."""
    inferred: dict[str, onnx.TypeProto] = {}

    def types() -> Mapping[str, onnx.TypeProto]:
        if not inferred:
            try:
                shaped = onnx.shape_inference.infer_shapes(model)
            except Exception:  # inference errors: fall back to the declared types
                shaped = model
            graph = shaped.graph
            inferred.update({v.name: v.type for v in (*graph.input, *graph.value_info)})
            for tensor in graph.initializer:
                inferred[tensor.name] = onnx.helper.make_tensor_type_proto(
                    tensor.data_type, list(tensor.dims)
                )
        return inferred

    return types


def expand_functions(
    model: onnx.ModelProto, opset: int, native: Callable[[NodeProto], bool]
) -> onnx.ModelProto:
    """``model`` with every node that ``native`` refuses and whose schema defines a body
    replaced by that body (the model itself when there is none)."""
    current = model
    for round_index in range(_MAX_ROUNDS):
        candidates = [n for n in current.graph.node if not native(n) and _schema(n, opset)]
        if not candidates:
            return current
        types = _lazy_types(current)
        nodes: list[NodeProto] = []
        changed = False
        for index, node in enumerate(current.graph.node):
            body = None if native(node) else _body(node, opset, types)
            expanded = (
                _expand(node, body, f"{node.name or node.op_type}_{round_index}_{index}/", opset)
                if body
                else []
            )
            if expanded:
                nodes.extend(expanded)
                changed = True
            else:
                nodes.append(node)
        if not changed:
            return current
        replaced = onnx.ModelProto()
        replaced.CopyFrom(current)
        replaced.graph.ClearField("node")
        replaced.graph.node.extend(nodes)
        current = replaced
    return current
