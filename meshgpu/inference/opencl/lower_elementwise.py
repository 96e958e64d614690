"""Lowering of element-wise operators: unary maps (with a fused activation), broadcasting
binary maps, variadic Sum/Mean/Max/Min, and inference BatchNormalization as a per-channel
affine that absorbs the Mul/Add/activation after it.
"""

from __future__ import annotations

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes, fusion, lower_depthwise, lower_excitation
from meshgpu.inference.opencl.graph import Node, legacy_broadcast_shape
from meshgpu.inference.opencl.kernels.elementwise import (
    AFFINE_SOURCE,
    BINARY_EXPRESSIONS,
    BINARY_SOURCE,
    CHUNK,
    COMPARISON_EXPRESSIONS,
    FAST_EXP_SOURCE,
    FLOAT32_EXPRESSIONS,
    GELU_EXPRESSIONS,
    INTEGER_BINARY_EXPRESSIONS,
    INTEGER_POWER_SOURCE,
    INTEGER_UNARY_EXPRESSIONS,
    PREDICATE_EXPRESSIONS,
    UNARY_EXPRESSIONS,
    UNARY_SOURCE,
    VECTOR_SAFE_UNARY,
    VECTOR_UNARY_SOURCE,
    unary_parameters,
)
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.lower_tensor import (
    _count,
    broadcast_strides,
    collapse,
    typed_source,
)
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32, int_array, lowers
from meshgpu.inference.opencl.tensors import DeviceTensor


# -- element-wise ----------------------------------------------------------------------
def _typed_unary(
    builder: PlanBuilder, node: Node, expression: str, out_dtype: object = None
) -> None:
    """``y = EXPRESSION(x)`` in the input's element type (no fusion): integer, bool and
    float64 maps, and the float tests with a bool result."""
    x = builder.tensor(node, node.inputs[0])
    alpha, beta = unary_parameters(node.op, node.attrs)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    output = builder.new_tensor(node.outputs[0], x.shape, out_dtype)
    total = _count(x.shape)
    builder.launch(
        node,
        typed_source(
            f"#define EXPRESSION ({expression})\n" + UNARY_SOURCE, TA=x.dtype, TO=out_dtype
        ),
        "unary",
        [x.storage, output.storage, f32(alpha), f32(beta), i32(total)],
        total=total,
        per_item=CHUNK,
    )


@lowers(*PREDICATE_EXPRESSIONS, "Not", "BitwiseNot", typed=True)
def lower_predicate(builder: PlanBuilder, node: Node) -> None:
    dtype = builder.dtype(node.inputs[0])
    if node.op == "Not":
        _typed_unary(builder, node, "!x", dtypes.BOOL)
    elif node.op == "BitwiseNot":
        _typed_unary(builder, node, "~x")
    elif dtypes.is_float(dtype):
        _typed_unary(builder, node, PREDICATE_EXPRESSIONS[node.op], dtypes.BOOL)
    else:
        raise UnsupportedOperatorError(f"{node.describe()} on {dtypes.type_name(dtype)}")


@lowers(*UNARY_EXPRESSIONS, "LeakyRelu", "Clip", "Gelu", typed=True)
def lower_unary(builder: PlanBuilder, node: Node) -> None:
    dtype = builder.dtype(node.inputs[0])
    if node.op == "Clip" and (dtype != dtypes.FLOAT32 or fusion.clip_bounds(builder, node) is None):
        _clip_with_tensors(builder, node)
        return
    if dtype != dtypes.FLOAT32:
        if dtypes.is_integer(dtype) and node.op in INTEGER_UNARY_EXPRESSIONS:
            _typed_unary(builder, node, INTEGER_UNARY_EXPRESSIONS[node.op])
            return
        if dtype == np.float64 and node.op in UNARY_EXPRESSIONS:
            _typed_unary(builder, node, UNARY_EXPRESSIONS[node.op])
            return
        raise UnsupportedOperatorError(
            f"the OpenCL backend cannot run {node.describe()} on {dtypes.type_name(dtype)}"
        )
    if lower_depthwise.defers(builder, node):
        return
    x = builder.tensor(node, node.inputs[0])
    alpha, beta = unary_parameters(node.op, node.attrs)
    if node.op == "Gelu":
        approximate = str(node.attrs.get("approximate", "none"))
        if approximate not in GELU_EXPRESSIONS:
            raise UnsupportedOperatorError(f"{node.describe()}: approximate={approximate!r}")
        base = f"#define BASE(x) ({GELU_EXPRESSIONS[approximate]})\n"
    elif node.op in FLOAT32_EXPRESSIONS:
        base = f"#define BASE(x) ({FLOAT32_EXPRESSIONS[node.op]})\n"
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
    vector = node.op in VECTOR_SAFE_UNARY and all(
        n.op in VECTOR_SAFE_UNARY for n in epilogue.absorbed
    )
    builder.launch(
        node,
        VECTOR_SOURCE + FAST_EXP_SOURCE + prefix + VECTOR_UNARY_SOURCE
        if vector
        else FAST_EXP_SOURCE + prefix + UNARY_SOURCE,
        "unary8" if vector else "unary",
        [x.storage, output.storage, f32(alpha), f32(beta), i32(total)],
        total=total,
        per_item=CHUNK,
    )


def _clip_with_tensors(builder: PlanBuilder, node: Node) -> None:
    """Clip with run-time bounds or on integers: Max with the lower bound, then Min with the
    upper (attributes before opset 11 become constants of the input's type)."""
    dtype = builder.dtype(node.inputs[0])
    bounds: list[str | None] = [None, None]
    if node.opset < 11:
        for position, key in enumerate(("min", "max")):
            if key in node.attrs:
                name = f"{node.name}/{key}"
                builder.values[name] = np.asarray(node.attrs[key], dtype=dtype)
                bounds[position] = name
    else:
        for position in (1, 2):
            if len(node.inputs) > position and node.inputs[position]:
                bounds[position - 1] = node.inputs[position]
    current = node.inputs[0]
    steps = [(op, name) for op, name in zip(("Max", "Min"), bounds, strict=True) if name]
    if not steps:
        source = builder.tensor(node, current)
        builder.alias(node.outputs[0], source, source.shape)
        return
    for position, (op, name) in enumerate(steps):
        target = node.outputs[0] if position == len(steps) - 1 else f"{node.name}/{op}"
        _binary(builder, node, op, current, name, target)
        current = target


#: Pow by these constant exponents, as the products or roots they are.
CONSTANT_POWERS = {1.0: "a", 2.0: "a * a", 3.0: "a * a * a", 0.5: "sqrt(a)", -1.0: "1 / a"}


def _binary_expression(
    node: Node, op: str, a_type: np.dtype, b_type: np.dtype
) -> tuple[str, np.dtype]:
    """(OpenCL expression in ``a`` and ``b``, result type) of ``op`` on these types."""
    if op in COMPARISON_EXPRESSIONS:
        return COMPARISON_EXPRESSIONS[op], dtypes.BOOL
    if op == "Mod":
        if dtypes.is_float(a_type) and int(node.attrs.get("fmod", 0)):
            return "fmod(a, b)", a_type
        if dtypes.is_float(a_type):  # numpy's mod: the result takes the divisor's sign
            return (
                "fmod(a, b) != 0 && ((fmod(a, b) < 0) != (b < 0)) ? fmod(a, b) + b : fmod(a, b)",
                a_type,
            )
        op = "ModTrunc" if int(node.attrs.get("fmod", 0)) else "ModFloor"
    if op == "BitShift":
        op = "BitShift" + str(node.attrs.get("direction", "LEFT"))
    if op == "Pow" and dtypes.is_float(a_type):
        return "pow(a, (TA)b)", a_type
    if op == "Pow" and dtypes.is_float(b_type):
        return "pow((float)a, (float)b)", a_type
    if dtypes.is_float(a_type) and op in BINARY_EXPRESSIONS:
        return BINARY_EXPRESSIONS[op], a_type
    if not dtypes.is_float(a_type) and op in INTEGER_BINARY_EXPRESSIONS:
        return INTEGER_BINARY_EXPRESSIONS[op], a_type
    raise UnsupportedOperatorError(
        f"the OpenCL backend cannot run {node.describe()} on {dtypes.type_name(a_type)}"
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
    a_type = builder.dtype(a_name)
    b_type = builder.dtype(b_name)
    if builder.is_host(a_name) and not builder.is_host(b_name) and op != "Pow":
        a_type = b_type  # a constant operand takes the device tensor's type
    if builder.is_host(b_name) and not builder.is_host(a_name) and op != "Pow":
        b_type = a_type
    a, b = builder.tensor(node, a_name, a_type), builder.tensor(node, b_name, b_type)
    expression, out_type = _binary_expression(node, op, a.dtype, b.dtype)
    if op == "Pow" and dtypes.is_float(a.dtype) and builder.is_host(b_name):
        exponent = np.asarray(builder.host(b_name))
        if exponent.size == 1 and float(exponent.reshape(-1)[0]) in CONSTANT_POWERS:
            # pow() is a libm call per element; GPT-2's GELU cubes, LayerNorm squares
            expression = CONSTANT_POWERS[float(exponent.reshape(-1)[0])]
    dims, (a_strides, b_strides) = collapse(
        out_shape, broadcast_strides(a_shape, out_shape), broadcast_strides(b_shape, out_shape)
    )
    meta = builder.weight(
        ("meta", tuple(dims), tuple(a_strides), tuple(b_strides)),
        lambda: int_array([*dims, *a_strides, *b_strides]),
    )
    output = builder.new_tensor(output_name, out_shape, out_type)
    total = _count(out_shape)
    source = (
        f"#define NDIM {len(dims)}\n#define EXPRESSION ({expression})\n"
        f"#define ACT(v) ({activation or 'v'})\n" + BINARY_SOURCE
    )
    if "integer_power" in expression:
        source = INTEGER_POWER_SOURCE + source
    if (a.dtype, b.dtype, out_type) != (dtypes.FLOAT32,) * 3:
        source = typed_source(source, TA=a.dtype, TB=b.dtype, TO=out_type)
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
    or MatMul operand: alias the product to the tensor and let the Gemm fold the factor into alpha
    (one launch fewer; the digits model scales its pixels so before its first Gemm)."""
    consumer = builder.sole_consumer(node.outputs[0])
    if (
        consumer is None
        or consumer.op not in ("Gemm", "MatMul")
        or node.outputs[0] not in consumer.inputs[:2]
    ):
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
        view = builder.views.get(tensor_name)
        if view is not None and consumer.op == "MatMul":  # (the product reads views)
            builder.views[node.outputs[0]] = view
        else:
            builder.alias(node.outputs[0], builder.tensor(node, tensor_name), shape)
        builder.operand_scales[node.outputs[0]] = float(factor.reshape(()))
        return True
    return False


@lowers(
    *BINARY_EXPRESSIONS,
    *COMPARISON_EXPRESSIONS,
    "Mod",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    typed=True,
)
def lower_binary(builder: PlanBuilder, node: Node) -> None:
    a_name, b_name = node.inputs[0], node.inputs[1]
    float_only = all(builder.dtype(n) == dtypes.FLOAT32 for n in (a_name, b_name))
    if not float_only or node.op not in BINARY_EXPRESSIONS:
        _binary(builder, node, node.op, a_name, b_name, node.outputs[0])
        return
    if node.op == "Mul" and _scale_through_gemm(builder, node):
        return
    if node.op == "Mul" and lower_excitation.lower_channel_scale(builder, node):
        return
    a_shape = builder.shape(a_name)
    b_shape = legacy_broadcast_shape(node, len(a_shape), builder.shape(b_name))
    out_shape = tuple(np.broadcast_shapes(a_shape, b_shape))
    epilogue = fusion.collect(
        builder, node.outputs[0], out_shape, 0, allow_affine=False, allow_residual=False
    )
    _binary(builder, node, node.op, a_name, b_name, epilogue.output, epilogue.activation)


@lowers("Sum", "Mean", "Max", "Min", typed=True)
def lower_variadic(builder: PlanBuilder, node: Node) -> None:
    names = [n for n in node.inputs if n]
    op = {"Sum": "Add", "Mean": "Add", "Max": "Max", "Min": "Min"}[node.op]
    if len(names) == 1:
        source = builder.tensor(node, names[0])
        builder.alias(node.outputs[0], source, source.shape)
        return
    if any(builder.dtype(n) != dtypes.FLOAT32 for n in names):
        if node.op == "Mean":
            raise UnsupportedOperatorError(f"{node.describe()} on non-float32 tensors")
        current = names[0]
        for position, name in enumerate(names[1:], start=1):
            last = position == len(names) - 1
            target = node.outputs[0] if last else f"{node.name}/partial{position}"
            _binary(builder, node, op, current, name, target)
            current = target
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
