"""Lowering of element-wise operators: unary maps (with a fused activation), broadcasting
binary maps, variadic Sum/Mean/Max/Min, and inference BatchNormalization as a per-channel
affine that absorbs the Mul/Add/activation after it.
"""

from __future__ import annotations

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node, legacy_broadcast_shape
from meshgpu.inference.opencl.kernels.elementwise import (
    AFFINE_SOURCE,
    BINARY_EXPRESSIONS,
    BINARY_SOURCE,
    CHUNK,
    UNARY_EXPRESSIONS,
    UNARY_PARAMETERS,
    UNARY_SOURCE,
)
from meshgpu.inference.opencl.lower_tensor import _count, broadcast_strides, collapse
from meshgpu.inference.opencl.plan import (
    DeviceTensor,
    PlanBuilder,
    f32,
    i32,
    int_array,
    lowers,
)


# -- element-wise ----------------------------------------------------------------------
@lowers(*UNARY_EXPRESSIONS, "LeakyRelu", "Clip")
def lower_unary(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    (alpha_name, alpha_default), (beta_name, beta_default) = UNARY_PARAMETERS.get(
        node.op, (("", 0.0), ("", 0.0))
    )
    alpha = float(node.attrs.get(alpha_name, alpha_default))
    beta = float(node.attrs.get(beta_name, beta_default))
    if node.op in UNARY_EXPRESSIONS:
        base = f"#define BASE(x) ({UNARY_EXPRESSIONS[node.op]})\n"
    else:
        fused = fusion.activation_expression(builder, node)
        if fused is None:
            raise UnsupportedOperatorError(f"{node.describe()}: run-time Clip bounds")
        base = f"#define BASE(v) ({fused})\n"
    epilogue = fusion.collect(
        builder, node.outputs[0], x.shape, 0, allow_affine=False, allow_residual=False
    )
    prefix = base + epilogue.act_define() + "#define EXPRESSION ACT(BASE(x))\n"
    output = builder.new_tensor(epilogue.output, x.shape)
    total = _count(x.shape)
    builder.launch(
        node,
        prefix + UNARY_SOURCE,
        "unary",
        [x.storage, output.storage, f32(alpha), f32(beta), i32(total)],
        total=total,
        per_item=CHUNK,
    )


def _binary(
    builder: PlanBuilder,
    node: Node,
    op: str,
    a_name: str,
    b_name: str,
    output_name: str,
    activation: str = "",
) -> DeviceTensor:
    a_shape = builder.shape(a_name)
    b_shape = legacy_broadcast_shape(node, len(a_shape), builder.shape(b_name))
    try:
        out_shape = tuple(int(d) for d in np.broadcast_shapes(a_shape, b_shape))
    except ValueError as error:
        raise ModelError(
            f"{node.describe()}: shapes {a_shape} and {b_shape} do not broadcast"
        ) from error
    a, b = builder.tensor(node, a_name), builder.tensor(node, b_name)
    dims, (a_strides, b_strides) = collapse(
        out_shape, broadcast_strides(a_shape, out_shape), broadcast_strides(b_shape, out_shape)
    )
    meta = builder.weight(
        ("meta", tuple(dims), tuple(a_strides), tuple(b_strides)),
        lambda: int_array([*dims, *a_strides, *b_strides]),
    )
    output = builder.new_tensor(output_name, out_shape)
    total = _count(out_shape)
    source = (
        f"#define NDIM {len(dims)}\n#define EXPRESSION ({BINARY_EXPRESSIONS[op]})\n"
        f"#define ACT(v) ({activation or 'v'})\n" + BINARY_SOURCE
    )
    builder.launch(
        node,
        source,
        "binary",
        [a.storage, b.storage, output.storage, meta, i32(total)],
        total=total,
        per_item=CHUNK,
    )
    return output


def _scale_through_gemm(builder: PlanBuilder, node: Node) -> bool:
    """Mul of a device tensor by a one-element float constant whose only reader is a Gemm
    operand: alias the product to the tensor and let the Gemm fold the factor into alpha
    (one launch fewer; the digits model scales its pixels so before its first Gemm)."""
    consumer = builder.sole_consumer(node.outputs[0])
    if consumer is None or consumer.op != "Gemm" or node.outputs[0] not in consumer.inputs[:2]:
        return False
    if consumer.inputs[0] == consumer.inputs[1]:
        return False
    for tensor_name, constant_name in ((node.inputs[0], node.inputs[1]), node.inputs[1::-1]):
        if builder.is_host(tensor_name) or not builder.is_host(constant_name):
            continue
        factor = builder.host(constant_name)
        shape = builder.shape(tensor_name)
        if factor.size != 1 or factor.dtype.kind != "f" or factor.ndim > len(shape):
            continue
        builder.alias(node.outputs[0], builder.tensor(node, tensor_name), shape)
        builder.operand_scales[node.outputs[0]] = float(factor.reshape(()))
        return True
    return False


@lowers(*BINARY_EXPRESSIONS)
def lower_binary(builder: PlanBuilder, node: Node) -> None:
    if node.op == "Mul" and _scale_through_gemm(builder, node):
        return
    a_name, b_name = node.inputs[0], node.inputs[1]
    a_shape = builder.shape(a_name)
    b_shape = legacy_broadcast_shape(node, len(a_shape), builder.shape(b_name))
    out_shape = tuple(np.broadcast_shapes(a_shape, b_shape))
    epilogue = fusion.collect(
        builder, node.outputs[0], out_shape, 0, allow_affine=False, allow_residual=False
    )
    _binary(builder, node, node.op, a_name, b_name, epilogue.output, epilogue.activation)


@lowers("Sum", "Mean", "Max", "Min")
def lower_variadic(builder: PlanBuilder, node: Node) -> None:
    names = [n for n in node.inputs if n]
    op = {"Sum": "Add", "Mean": "Add", "Max": "Max", "Min": "Min"}[node.op]
    if len(names) == 1:
        source = builder.tensor(node, names[0])
        builder.alias(node.outputs[0], source, source.shape)
        return
    shape = tuple(np.broadcast_shapes(*(builder.shape(n) for n in names)))
    epilogue = fusion.collect(
        builder, node.outputs[0], shape, 0, allow_affine=False, allow_residual=False
    )
    current = names[0]
    for position, name in enumerate(names[1:], start=1):
        last = position == len(names) - 1 and node.op != "Mean"
        target = epilogue.output if last else f"{node.name}/partial{position}"
        _binary(builder, node, op, current, name, target, epilogue.activation if last else "")
        current = target
    if node.op == "Mean":
        partial = builder.tensor(node, current)
        output = builder.new_tensor(epilogue.output, partial.shape)
        prefix = epilogue.act_define() + "#define EXPRESSION ACT(x * alpha)\n"
        total = _count(partial.shape)
        builder.launch(
            node,
            prefix + UNARY_SOURCE,
            "unary",
            [partial.storage, output.storage, f32(1.0 / len(names)), f32(0), i32(total)],
            total=total,
            per_item=CHUNK,
        )


@lowers("BatchNormalization")
def lower_batchnorm(builder: PlanBuilder, node: Node) -> None:
    """Inference-mode BatchNormalization as a per-channel affine (plus what follows it)."""
    if int(node.attrs.get("training_mode", 0)) or len([o for o in node.outputs if o]) > 1:
        raise UnsupportedOperatorError(f"{node.describe()}: training mode is not supported")
    x = builder.tensor(node, node.inputs[0])
    if len(x.shape) < 2:
        raise ModelError(f"{node.describe()}: input needs a channel axis, got {x.shape}")
    affine = fusion._batchnorm_affine(builder, node)
    if affine is None:
        raise UnsupportedOperatorError(
            f"{node.describe()}: run-time statistics or spatial=0 are not supported"
        )
    epilogue = fusion.collect(builder, node.outputs[0], x.shape, 1, allow_residual=False)
    scale = affine[0] * epilogue.scale
    shift = affine[1] * epilogue.scale + epilogue.shift
    _affine(builder, node, x, scale, shift, epilogue)


def _affine(
    builder: PlanBuilder,
    node: Node,
    x: DeviceTensor,
    scale: np.ndarray,
    shift: np.ndarray,
    epilogue: fusion.Epilogue,
) -> None:
    key = ("affine", node.name, tuple(n.name for n in epilogue.absorbed))
    scale_buffer = builder.weight((*key, "scale"), lambda: scale.astype(np.float32))
    shift_buffer = builder.weight((*key, "shift"), lambda: shift.astype(np.float32))
    output = builder.new_tensor(epilogue.output, x.shape)
    total = _count(x.shape)
    channels = x.shape[1]
    inner = _count(x.shape[2:])
    builder.launch(
        node,
        epilogue.act_define() + AFFINE_SOURCE,
        "channel_affine",
        [
            x.storage,
            output.storage,
            scale_buffer,
            shift_buffer,
            i32(channels),
            i32(inner),
            i32(total),
        ],
        total=total,
        per_item=CHUNK,
    )
