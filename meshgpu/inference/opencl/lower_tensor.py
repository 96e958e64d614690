"""Lowering of element-wise, pooling, normalisation and data-movement operators.

View-like operators (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout, float Cast)
launch nothing: their output aliases the input's storage with a new shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.folding import _axes
from meshgpu.inference.opencl.geometry import window_geometry
from meshgpu.inference.opencl.graph import Node, legacy_broadcast_shape
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.elementwise import (
    AFFINE_SOURCE,
    BINARY_EXPRESSIONS,
    BINARY_SOURCE,
    CHUNK,
    COPY_SOURCE,
    UNARY_EXPRESSIONS,
    UNARY_PARAMETERS,
    UNARY_SOURCE,
)
from meshgpu.inference.opencl.plan import (
    DeviceTensor,
    PlanBuilder,
    Storage,
    f32,
    i32,
    int_array,
    lowers,
)


def _count(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    strides = [0] * len(shape)
    running = 1
    for axis in range(len(shape) - 1, -1, -1):
        strides[axis] = running
        running *= int(shape[axis])
    return strides


def broadcast_strides(shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Strides of ``shape`` read as ``out_shape`` (numpy broadcasting: 0 where repeated)."""
    padded = [1] * (len(out_shape) - len(shape)) + list(shape)
    strides = contiguous_strides(padded)
    return [0 if size == 1 else stride for size, stride in zip(padded, strides, strict=True)]


def collapse(
    shape: Sequence[int], *stride_sets: Sequence[int]
) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent dimensions that are contiguous for every stride set; drop size-1 dims."""
    dims: list[int] = []
    sets: list[list[int]] = [[] for _ in stride_sets]
    for axis, size in enumerate(shape):
        if size == 1:
            continue
        if dims and all(
            strides[-1] == stride_set[axis] * size
            for strides, stride_set in zip(sets, stride_sets, strict=True)
        ):
            dims[-1] *= size
            for strides, stride_set in zip(sets, stride_sets, strict=True):
                strides[-1] = stride_set[axis]
            continue
        dims.append(int(size))
        for strides, stride_set in zip(sets, stride_sets, strict=True):
            strides.append(int(stride_set[axis]))
    if not dims:
        return [1], [[0] for _ in stride_sets]
    return dims, sets


def strided_copy(
    builder: PlanBuilder,
    node: Node,
    source: Storage,
    target: Storage,
    shape: Sequence[int],
    source_strides: Sequence[int],
    target_strides: Sequence[int],
    source_offset: int = 0,
    target_offset: int = 0,
) -> None:
    dims, (src, dst) = collapse(shape, source_strides, target_strides)
    meta = builder.weight(
        ("meta", tuple(dims), tuple(src), tuple(dst)), lambda: int_array([*dims, *src, *dst])
    )
    total = _count(shape)
    builder.launch(
        node,
        f"#define NDIM {len(dims)}\n" + COPY_SOURCE,
        "strided_copy",
        [source, target, meta, i32(source_offset), i32(target_offset), i32(total)],
        total=total,
        per_item=CHUNK,
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


@lowers(*BINARY_EXPRESSIONS)
def lower_binary(builder: PlanBuilder, node: Node) -> None:
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


# -- views -----------------------------------------------------------------------------
def _view(builder: PlanBuilder, node: Node, shape: Sequence[int]) -> None:
    source = builder.tensor(node, node.inputs[0])
    if _count(shape) != _count(source.shape):
        raise ModelError(
            f"{node.describe()}: cannot view {source.shape} ({_count(source.shape)} elements) "
            f"as {tuple(shape)}"
        )
    builder.alias(node.outputs[0], source, shape)


@lowers("Identity", "Dropout")
def lower_identity(builder: PlanBuilder, node: Node) -> None:
    if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
        training = builder.host(node.inputs[2]) if builder.is_host(node.inputs[2]) else None
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise UnsupportedOperatorError(f"{node.describe()}: training-mode Dropout")
    shape = builder.shape(node.inputs[0])
    _view(builder, node, shape)
    if len(node.outputs) > 1 and node.outputs[1]:
        builder.values[node.outputs[1]] = np.ones(shape, dtype=bool)


@lowers("Cast")
def lower_cast(builder: PlanBuilder, node: Node) -> None:
    if int(node.attrs["to"]) != 1:
        raise UnsupportedOperatorError(
            f"{node.describe()}: device tensors are float32; Cast to type {node.attrs['to']}"
        )
    _view(builder, node, builder.shape(node.inputs[0]))


@lowers("Reshape")
def lower_reshape(builder: PlanBuilder, node: Node) -> None:
    shape_in = builder.shape(node.inputs[0])
    if node.opset < 5:
        requested = [int(d) for d in node.attrs.get("shape", [])]
    elif builder.is_host(node.inputs[1]):
        requested = [int(d) for d in np.asarray(builder.host(node.inputs[1])).reshape(-1)]
    else:
        raise UnsupportedOperatorError(f"{node.describe()}: the target shape must be constant")
    allow_zero = int(node.attrs.get("allowzero", 0))
    shape = [shape_in[i] if d == 0 and not allow_zero else d for i, d in enumerate(requested)]
    if -1 in shape:
        known = _count([d for d in shape if d != -1])
        shape[shape.index(-1)] = _count(shape_in) // known if known else 0
    _view(builder, node, shape)


@lowers("Flatten")
def lower_flatten(builder: PlanBuilder, node: Node) -> None:
    shape = builder.shape(node.inputs[0])
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    _view(builder, node, (_count(shape[:axis]), _count(shape[axis:])))


@lowers("Squeeze")
def lower_squeeze(builder: PlanBuilder, node: Node) -> None:
    shape = builder.shape(node.inputs[0])
    values = [
        None,
        *(builder.host(n) if n and builder.is_host(n) else None for n in node.inputs[1:]),
    ]
    axes = _axes(node, values, len(shape)) or [i for i, d in enumerate(shape) if d == 1]
    _view(builder, node, [d for i, d in enumerate(shape) if i not in axes])


@lowers("Unsqueeze")
def lower_unsqueeze(builder: PlanBuilder, node: Node) -> None:
    shape = list(builder.shape(node.inputs[0]))
    values = [
        None,
        *(builder.host(n) if n and builder.is_host(n) else None for n in node.inputs[1:]),
    ]
    for axis in _axes(node, values, len(shape)):
        shape.insert(axis, 1)
    _view(builder, node, shape)


# -- data movement -----------------------------------------------------------------------
@lowers("Transpose")
def lower_transpose(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    rank = len(x.shape)
    perm = [int(p) for p in node.attrs.get("perm", list(range(rank - 1, -1, -1)))]
    out_shape = [x.shape[p] for p in perm]
    in_strides = contiguous_strides(x.shape)
    output = builder.new_tensor(node.outputs[0], out_shape)
    strided_copy(
        builder,
        node,
        x.storage,
        output.storage,
        out_shape,
        [in_strides[p] for p in perm],
        contiguous_strides(out_shape),
    )


@lowers("Concat")
def lower_concat(builder: PlanBuilder, node: Node) -> None:
    names = [n for n in node.inputs if n]
    shapes = [builder.shape(n) for n in names]
    axis = int(node.attrs.get("axis", 1))
    rank = len(shapes[0])
    axis = axis + rank if axis < 0 else axis
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    output = builder.tensors.get(node.outputs[0]) or builder.new_tensor(node.outputs[0], out_shape)
    out_strides = contiguous_strides(out_shape)
    offset = 0
    for name, shape in zip(names, shapes, strict=True):
        if _count(shape) == 0:
            continue
        if name in builder.placed:  # its producer already wrote into this slice
            offset += shape[axis]
            continue
        source = builder.tensor(node, name)
        strided_copy(
            builder,
            node,
            source.storage,
            output.storage,
            shape,
            contiguous_strides(shape),
            out_strides,
            0,
            offset * out_strides[axis],
        )
        offset += shape[axis]


@lowers("Expand")
def lower_expand(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    if not builder.is_host(node.inputs[1]):
        raise UnsupportedOperatorError(f"{node.describe()}: the shape must be constant")
    requested = [int(d) for d in np.asarray(builder.host(node.inputs[1])).reshape(-1)]
    out_shape = list(np.broadcast_shapes(x.shape, tuple(requested)))
    output = builder.new_tensor(node.outputs[0], out_shape)
    strided_copy(
        builder,
        node,
        x.storage,
        output.storage,
        out_shape,
        broadcast_strides(x.shape, out_shape),
        contiguous_strides(out_shape),
    )


@lowers("Gather")
def lower_gather(builder: PlanBuilder, node: Node) -> None:
    """Gather on device data with constant indices: one strided copy per index."""
    data = builder.tensor(node, node.inputs[0])
    if not builder.is_host(node.inputs[1]):
        raise UnsupportedOperatorError(f"{node.describe()}: indices must be constant")
    indices = np.asarray(builder.host(node.inputs[1]), dtype=np.int64)
    if indices.size > 64:
        raise UnsupportedOperatorError(f"{node.describe()}: more than 64 gathered indices")
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(data.shape) if axis < 0 else axis
    size = data.shape[axis]
    out_shape = [*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]]
    output = builder.new_tensor(node.outputs[0], out_shape)
    slice_shape = [*data.shape[:axis], 1, *data.shape[axis + 1 :]]
    in_strides = contiguous_strides(data.shape)
    flat_out = [*data.shape[:axis], max(indices.size, 1), *data.shape[axis + 1 :]]
    out_strides = contiguous_strides(flat_out)
    for position, raw_index in enumerate(indices.reshape(-1)):
        index = int(raw_index) + size if raw_index < 0 else int(raw_index)
        if not 0 <= index < size:
            raise ModelError(f"{node.describe()}: index {index} out of range for {size}")
        strided_copy(
            builder,
            node,
            data.storage,
            output.storage,
            slice_shape,
            in_strides,
            out_strides,
            index * in_strides[axis],
            position * out_strides[axis],
        )


@lowers("Pad")
def lower_pad(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    rank = len(x.shape)
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":
        raise UnsupportedOperatorError(f"{node.describe()}: Pad mode {mode!r}")
    if node.opset < 11:
        pads = [int(p) for p in node.attrs.get("pads", node.attrs.get("paddings", []))]
        value = float(node.attrs.get("value", 0.0))
    else:
        if not builder.is_host(node.inputs[1]):
            raise UnsupportedOperatorError(f"{node.describe()}: pads must be constant")
        pads = [int(p) for p in np.asarray(builder.host(node.inputs[1])).reshape(-1)]
        value = 0.0
        if len(node.inputs) > 2 and node.inputs[2]:
            value = float(np.asarray(builder.host(node.inputs[2])).reshape(-1)[0])
        if len(node.inputs) > 3 and node.inputs[3]:
            axes = [int(a) % rank for a in np.asarray(builder.host(node.inputs[3])).reshape(-1)]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[rank + a] = pads[i], pads[len(axes) + i]
            pads = full
    if len(pads) != 2 * rank or any(p < 0 for p in pads):
        raise UnsupportedOperatorError(f"{node.describe()}: pads {pads} (negative or wrong rank)")
    out_shape = [x.shape[i] + pads[i] + pads[rank + i] for i in range(rank)]
    output = builder.new_tensor(node.outputs[0], out_shape)
    total = _count(out_shape)
    builder.launch(
        node,
        COPY_SOURCE.replace("NDIM", "1"),
        "fill",
        [output.storage, f32(value), i32(total)],
        total=total,
        per_item=CHUNK,
    )
    out_strides = contiguous_strides(out_shape)
    offset = sum(pads[i] * out_strides[i] for i in range(rank))
    strided_copy(
        builder,
        node,
        x.storage,
        output.storage,
        x.shape,
        contiguous_strides(x.shape),
        out_strides,
        0,
        offset,
    )


# -- windows and reductions ---------------------------------------------------------------
@lowers("MaxPool", "AveragePool")
def lower_pool(builder: PlanBuilder, node: Node) -> None:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedOperatorError(f"{node.describe()}: the Indices output")
    x = builder.tensor(node, node.inputs[0])
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    attrs = dict(node.attrs)
    if len(x.shape) == 3 and len(kernel) == 1:
        x_shape = (x.shape[0], x.shape[1], 1, x.shape[2])
        kernel = [1, kernel[0]]
        for key in ("strides", "dilations"):
            if key in attrs:
                attrs[key] = [1, *attrs[key]]
        if "pads" in attrs:
            attrs["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
    elif len(x.shape) == 4 and len(kernel) == 2:
        x_shape = x.shape
    else:
        raise UnsupportedOperatorError(f"{node.describe()}: only 1-D and 2-D pooling")
    if node.op == "MaxPool" and int(node.attrs.get("storage_order", 0)):
        pass  # storage_order only affects the Indices output, which is rejected above
    geometry = window_geometry(
        node, x_shape[2:], kernel, attrs, ceil_mode=bool(int(node.attrs.get("ceil_mode", 0)))
    )
    out_h, out_w = geometry.output
    out_shape_4d = (x_shape[0], x_shape[1], out_h, out_w)
    out_shape = out_shape_4d if len(x.shape) == 4 else (x_shape[0], x_shape[1], out_w)
    output = builder.new_tensor(node.outputs[0], out_shape)
    if node.op == "MaxPool":
        kernel_name = "pool2d_max"
    elif int(node.attrs.get("count_include_pad", 0)):
        kernel_name = "pool2d_avg_pad"
    else:
        kernel_name = "pool2d_avg"
    rows = out_shape_4d[0] * out_shape_4d[1] * out_h  # one work-item per output row
    builder.launch(
        node,
        CORE_SOURCE,
        kernel_name,
        [
            x.storage,
            output.storage,
            *(
                i32(v)
                for v in (
                    x_shape[2],
                    x_shape[3],
                    out_h,
                    out_w,
                    kernel[0],
                    kernel[1],
                    *geometry.strides,
                    *geometry.pads_begin,
                    *geometry.pads_end,
                    *geometry.dilations,
                    rows,
                )
            ),
        ],
        total=rows,
    )


@lowers("GlobalAveragePool", "GlobalMaxPool")
def lower_global_pool(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    if len(x.shape) < 3:
        raise ModelError(f"{node.describe()}: needs N, C and spatial dims, got {x.shape}")
    out_shape = (x.shape[0], x.shape[1]) + (1,) * (len(x.shape) - 2)
    output = builder.new_tensor(node.outputs[0], out_shape)
    kernel_name = "global_pool_max" if node.op == "GlobalMaxPool" else "global_pool_avg"
    total = x.shape[0] * x.shape[1]
    builder.launch(
        node,
        CORE_SOURCE,
        kernel_name,
        [x.storage, output.storage, i32(_count(x.shape[2:])), i32(total)],
        total=total,
    )


@lowers("Softmax", "LogSoftmax")
def lower_softmax(builder: PlanBuilder, node: Node) -> None:
    """Opset < 13: coerce to 2-D at ``axis`` (default 1); opset >= 13: one axis (default -1)."""
    x = builder.tensor(node, node.inputs[0])
    rank = len(x.shape)
    axis = int(node.attrs.get("axis", 1 if node.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if node.opset < 13:
        length, inner = _count(x.shape[axis:]), 1
    else:
        length, inner = x.shape[axis], _count(x.shape[axis + 1 :])
    outer = _count(x.shape[:axis])
    output = builder.new_tensor(node.outputs[0], x.shape)
    kernel_name = "log_softmax" if node.op == "LogSoftmax" else "softmax"
    total = outer * inner
    builder.launch(
        node,
        CORE_SOURCE,
        kernel_name,
        [x.storage, output.storage, i32(length), i32(inner), i32(total)],
        total=total,
    )


@lowers("LRN")
def lower_lrn(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    size = int(node.attrs["size"])
    output = builder.new_tensor(node.outputs[0], x.shape)
    total = _count(x.shape)
    builder.launch(
        node,
        CORE_SOURCE,
        "lrn",
        [
            x.storage,
            output.storage,
            i32(x.shape[1]),
            i32(_count(x.shape[2:])),
            i32(size),
            f32(float(node.attrs.get("alpha", 1e-4))),
            f32(float(node.attrs.get("beta", 0.75))),
            f32(float(node.attrs.get("bias", 1.0))),
            i32(total),
        ],
        total=total,
        per_item=64,
    )
