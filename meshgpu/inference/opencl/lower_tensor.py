"""Lowering of data-movement operators (Transpose, Concat, Expand, Gather, Pad) and the
shared stride helpers; element-wise ops live in :mod:`.lower_elementwise`, windows in
:mod:`.lower_window`.

View-like operators (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout, float Cast)
launch nothing: their output aliases the input's storage with a new shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import onnx

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes
from meshgpu.inference.opencl.folding import _axes
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.elementwise import (
    CHUNK,
    COPY_SOURCE,
    UNARY_SOURCE,
)
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32, int_array, lowers
from meshgpu.inference.opencl.tensors import Storage, View, reshape_strides


def typed_source(source: str, **types: Any) -> str:
    """``source`` with its element-type macros (``T``, ``TA``, ``TB``, ``TO``) defined as the
    OpenCL C types of the given numpy dtypes (and the fp64 pragma where needed)."""
    defines = "".join(f"#define {macro} {dtypes.c_type(dtype)}\n" for macro, dtype in types.items())
    return dtypes.source_prefix(*types.values()) + defines + source


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
    dtype: Any = dtypes.FLOAT32,
) -> None:
    dims, (src, dst) = collapse(shape, source_strides, target_strides)
    kernel = "strided_copy"
    total = _count(shape)
    if np.dtype(dtype) == dtypes.FLOAT32 and dims[-1] % 8 == 0 and src[-1] == dst[-1] == 1:
        # rows contiguous on both sides (Transpose keeping the last axis, Concat, Slice of
        # leading axes): eight floats per step, one unaligned vector load and store
        dims, src, dst = [*dims[:-1], dims[-1] // 8], [*src[:-1], 8], [*dst[:-1], 8]
        kernel, total = "strided_copy8", total // 8
    meta = builder.weight(
        ("meta", tuple(dims), tuple(src), tuple(dst)), lambda: int_array([*dims, *src, *dst])
    )
    source_text = f"#define NDIM {len(dims)}\n" + COPY_SOURCE
    if kernel == "strided_copy8":
        source_text = VECTOR_SOURCE + source_text
    builder.launch(
        node,
        typed_source(source_text, T=dtype),
        kernel,
        [source, target, meta, i32(source_offset), i32(target_offset), i32(total)],
        total=total,
        per_item=CHUNK,
    )


# -- views -----------------------------------------------------------------------------
def _view(builder: PlanBuilder, node: Node, shape: Sequence[int]) -> None:
    view = builder.views.get(node.inputs[0])
    if view is not None and builder.feeds_product(node.outputs[0]):
        strides = reshape_strides(view.shape, view.strides, shape)
        if strides is not None:
            builder.views[node.outputs[0]] = View(
                view.storage, tuple(int(d) for d in shape), strides, view.offset, view.dtype
            )
            return
    source = builder.tensor(node, node.inputs[0])
    if _count(shape) != _count(source.shape):
        raise ModelError(
            f"{node.describe()}: cannot view {source.shape} ({_count(source.shape)} elements) "
            f"as {tuple(shape)}"
        )
    builder.alias(node.outputs[0], source, shape)


@lowers("Identity", "Dropout", typed=True)
def lower_identity(builder: PlanBuilder, node: Node) -> None:
    if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
        training = builder.host(node.inputs[2]) if builder.is_host(node.inputs[2]) else None
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise UnsupportedOperatorError(f"{node.describe()}: training-mode Dropout")
    shape = builder.shape(node.inputs[0])
    _view(builder, node, shape)
    if len(node.outputs) > 1 and node.outputs[1]:
        builder.values[node.outputs[1]] = np.ones(shape, dtype=bool)


@lowers("Cast", "CastLike", typed=True)
def lower_cast(builder: PlanBuilder, node: Node) -> None:
    """A conversion kernel, or a view when the type does not change. Float to bool is
    ``x != 0``; float to integer truncates (C conversion, as onnxruntime)."""
    x = builder.tensor(node, node.inputs[0])
    if node.op == "CastLike":
        target = builder.dtype(node.inputs[1])
    else:
        try:
            target = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
        except (KeyError, ValueError, TypeError) as error:
            raise UnsupportedOperatorError(
                f"{node.describe()}: unknown target type {node.attrs.get('to')}"
            ) from error
    if not dtypes.is_device_type(target):
        raise UnsupportedOperatorError(
            f"{node.describe()}: Cast to {dtypes.type_name(target)}, which is not a device type"
        )
    if target == x.dtype:
        _view(builder, node, x.shape)
        return
    output = builder.new_tensor(node.outputs[0], x.shape, target)
    expression = "x != 0" if target == dtypes.BOOL else "x"
    total = _count(x.shape)
    builder.launch(
        node,
        typed_source(f"#define EXPRESSION ({expression})\n" + UNARY_SOURCE, TA=x.dtype, TO=target),
        "unary",
        [x.storage, output.storage, f32(0), f32(0), i32(total)],
        total=total,
        per_item=CHUNK,
    )


@lowers("Reshape", typed=True)
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


@lowers("Flatten", typed=True)
def lower_flatten(builder: PlanBuilder, node: Node) -> None:
    shape = builder.shape(node.inputs[0])
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    _view(builder, node, (_count(shape[:axis]), _count(shape[axis:])))


@lowers("Squeeze", typed=True)
def lower_squeeze(builder: PlanBuilder, node: Node) -> None:
    shape = builder.shape(node.inputs[0])
    values = [
        None,
        *(builder.host(n) if n and builder.is_host(n) else None for n in node.inputs[1:]),
    ]
    axes = _axes(node, values, len(shape)) or [i for i, d in enumerate(shape) if d == 1]
    _view(builder, node, [d for i, d in enumerate(shape) if i not in axes])


@lowers("Unsqueeze", typed=True)
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
@lowers("Transpose", typed=True)
def lower_transpose(builder: PlanBuilder, node: Node) -> None:
    """A view when a product reads the result (attention's heads), else a strided copy."""
    x = _source(builder, node)
    rank = len(x.shape)
    perm = [int(p) for p in node.attrs.get("perm", list(range(rank - 1, -1, -1)))]
    out_shape = [x.shape[p] for p in perm]
    strides = [x.strides[p] for p in perm]
    _view_or_copy(builder, node, node.outputs[0], x, out_shape, strides, x.offset)


def _feeds_strided_norm(
    builder: PlanBuilder, node: Node, name: str, shape: Sequence[int], strides: Sequence[int]
) -> bool:
    """A Transpose whose only reader is a LayerNormalization over the last axis that reads
    rows of this layout in place (``normalize_rows_t8``: eight consecutive rows a lane each,
    or ``normalize_rows_strided`` where the consecutive rows are not a multiple of 8)."""
    consumer = builder.sole_consumer(name)
    if node.op != "Transpose" or consumer is None or consumer.op != "LayerNormalization":
        return False
    rank = len(shape)
    axis = int(consumer.attrs.get("axis", -1))
    if (axis + rank if axis < 0 else axis) != rank - 1 or rank < 2:
        return False
    if len([o for o in consumer.outputs if o]) != 1:
        return False
    return row_steps(shape[:-1], strides[:-1]) is not None


def row_steps(shape: Sequence[int], strides: Sequence[int]) -> tuple[int, int] | None:
    """(inner, outer) such that row ``r`` of a tensor with these leading dimensions and
    strides starts at ``(r / inner) * outer + r % inner``, or None where no such pair
    describes them."""
    dims, (steps,) = collapse(shape, strides)
    if len(dims) == 1:
        return (dims[0], 0) if steps[0] in (0, 1) else (1, steps[0])
    if len(dims) == 2 and steps[1] == 1:
        return dims[1], steps[0]
    return None


def _source(builder: PlanBuilder, node: Node) -> View:
    """The first input, as a view (a float device tensor read strided) where that saves a
    copy, else as its contiguous device tensor."""
    return builder.strided(node, node.inputs[0])


def _view_or_copy(
    builder: PlanBuilder,
    node: Node,
    name: str,
    source: View,
    shape: Sequence[int],
    strides: Sequence[int],
    offset: int,
) -> None:
    """Output ``name`` of a re-indexing operator: a view when only a product reads it,
    else a contiguous copy of those elements."""
    if (
        source.dtype == dtypes.FLOAT32
        and _count(shape)
        and (
            builder.feeds_product(name) or _feeds_strided_norm(builder, node, name, shape, strides)
        )
    ):
        builder.views[name] = View(
            source.storage, tuple(int(d) for d in shape), tuple(strides), offset, source.dtype
        )
        return
    output = builder.new_tensor(name, shape, source.dtype)
    strided_copy(
        builder,
        node,
        source.storage,
        output.storage,
        shape,
        strides,
        contiguous_strides(shape),
        offset,
        0,
        dtype=source.dtype,
    )


@lowers("Concat", typed=True)
def lower_concat(builder: PlanBuilder, node: Node) -> None:
    names = [n for n in node.inputs if n]
    shapes = [builder.shape(n) for n in names]
    axis = int(node.attrs.get("axis", 1))
    rank = len(shapes[0])
    axis = axis + rank if axis < 0 else axis
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    dtype = builder.dtype(names[0]) if not builder.is_host(names[0]) else None
    dtype = next((builder.dtype(n) for n in names if not builder.is_host(n)), dtype)
    output = builder.tensors.get(node.outputs[0]) or builder.new_tensor(
        node.outputs[0], out_shape, dtype
    )
    out_strides = contiguous_strides(out_shape)
    offset = 0
    for name, shape in zip(names, shapes, strict=True):
        if _count(shape) == 0:
            continue
        if name in builder.placed:  # its producer already wrote into this slice
            offset += shape[axis]
            continue
        source = builder.tensor(node, name, output.dtype)
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
            dtype=output.dtype,
        )
        offset += shape[axis]


@lowers("Expand", typed=True)
def lower_expand(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    if not builder.is_host(node.inputs[1]):
        raise UnsupportedOperatorError(f"{node.describe()}: the shape must be constant")
    requested = [int(d) for d in np.asarray(builder.host(node.inputs[1])).reshape(-1)]
    out_shape = list(np.broadcast_shapes(x.shape, tuple(requested)))
    output = builder.new_tensor(node.outputs[0], out_shape, x.dtype)
    strided_copy(
        builder,
        node,
        x.storage,
        output.storage,
        out_shape,
        broadcast_strides(x.shape, out_shape),
        contiguous_strides(out_shape),
        dtype=x.dtype,
    )


def lower_gather_constant(builder: PlanBuilder, node: Node) -> None:
    """Gather on device data with a few constant indices: one strided copy per index (the
    general case is :func:`.lower_indexing.lower_gather`)."""
    if not builder.is_host(node.inputs[1]):
        raise UnsupportedOperatorError(f"{node.describe()}: indices must be constant")
    indices = np.asarray(builder.host(node.inputs[1]), dtype=np.int64)
    source = builder.views.get(node.inputs[0])
    if indices.ndim == 0 and (source is not None or builder.feeds_product(node.outputs[0])):
        # one index: a view of that slice (attention's q, k, v from one stacked tensor)
        source = _source(builder, node)
        axis = int(node.attrs.get("axis", 0))
        axis = axis + len(source.shape) if axis < 0 else axis
        size = source.shape[axis]
        index = int(indices) + size if int(indices) < 0 else int(indices)
        if not 0 <= index < size:
            raise ModelError(f"{node.describe()}: index {index} out of range for {size}")
        shape = [*source.shape[:axis], *source.shape[axis + 1 :]]
        strides = [*source.strides[:axis], *source.strides[axis + 1 :]]
        offset = source.offset + index * source.strides[axis]
        _view_or_copy(builder, node, node.outputs[0], source, shape, strides, offset)
        return
    data = builder.tensor(node, node.inputs[0])
    if indices.size > 64:
        raise UnsupportedOperatorError(f"{node.describe()}: more than 64 gathered indices")
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(data.shape) if axis < 0 else axis
    size = data.shape[axis]
    out_shape = [*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]]
    output = builder.new_tensor(node.outputs[0], out_shape, data.dtype)
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
            dtype=data.dtype,
        )


@lowers("Pad", typed=True)
def lower_pad(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    rank = len(x.shape)
    mode = str(node.attrs.get("mode", "constant"))
    if node.opset < 11:
        pads = [int(p) for p in node.attrs.get("pads", node.attrs.get("paddings", []))]
        value = node.attrs.get("value", 0.0)
    else:
        if not builder.is_host(node.inputs[1]):
            raise UnsupportedOperatorError(f"{node.describe()}: pads must be constant")
        pads = [int(p) for p in np.asarray(builder.host(node.inputs[1])).reshape(-1)]
        value = 0.0
        if len(node.inputs) > 2 and node.inputs[2]:
            value = np.asarray(builder.host(node.inputs[2])).reshape(-1)[0]
        if len(node.inputs) > 3 and node.inputs[3]:
            axes = [int(a) % rank for a in np.asarray(builder.host(node.inputs[3])).reshape(-1)]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[rank + a] = pads[i], pads[len(axes) + i]
            pads = full
    if len(pads) != 2 * rank:
        raise ModelError(f"{node.describe()}: pads {pads} for a rank-{rank} tensor")
    if mode != "constant" or any(p < 0 for p in pads):
        from meshgpu.inference.opencl.lower_indexing import pad_with_map

        pad_with_map(builder, node, x, pads, mode, value)
        return
    out_shape = [x.shape[i] + pads[i] + pads[rank + i] for i in range(rank)]
    output = builder.new_tensor(node.outputs[0], out_shape, x.dtype)
    total = _count(out_shape)
    fill_type = np.uint8 if x.dtype == dtypes.BOOL else x.dtype
    builder.launch(
        node,
        typed_source(COPY_SOURCE.replace("NDIM", "1"), T=x.dtype),
        "fill",
        [output.storage, cast(np.generic, np.asarray(value).astype(fill_type)[()]), i32(total)],
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
        dtype=x.dtype,
    )


def _host_ints(builder: PlanBuilder, node: Node, position: int) -> list[int] | None:
    """Constant int input ``position`` as a list, None when absent."""
    if len(node.inputs) <= position or not node.inputs[position]:
        return None
    name = node.inputs[position]
    if not builder.is_host(name):
        raise UnsupportedOperatorError(f"{node.describe()}: input {name!r} must be constant")
    return [int(v) for v in np.asarray(builder.host(name)).reshape(-1)]


@lowers("Slice", typed=True)
def lower_slice(builder: PlanBuilder, node: Node) -> None:
    """numpy slicing per axis (ONNX clamps starts/ends the way Python's slices do)."""
    x = _source(builder, node)
    rank = len(x.shape)
    if node.opset < 10:
        starts = [int(v) for v in node.attrs["starts"]]
        ends = [int(v) for v in node.attrs["ends"]]
        axes = [int(v) for v in node.attrs.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        starts = _host_ints(builder, node, 1) or []
        ends = _host_ints(builder, node, 2) or []
        axes = _host_ints(builder, node, 3) or list(range(len(starts)))
        steps = _host_ints(builder, node, 4) or [1] * len(starts)
    in_strides = list(x.strides)
    out_shape = list(x.shape)
    strides = list(in_strides)
    offset = x.offset
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = axis + rank if axis < 0 else axis
        if step == 0:
            raise ModelError(f"{node.describe()}: a step of 0")
        limit = 2**62
        picked = range(x.shape[axis])[
            slice(max(min(start, limit), -limit), max(min(end, limit), -limit), step)
        ]
        out_shape[axis] = len(picked)
        strides[axis] = in_strides[axis] * step
        if len(picked):
            offset += picked[0] * in_strides[axis]
    _view_or_copy(builder, node, node.outputs[0], x, out_shape, strides, offset)


@lowers("Split", typed=True)
def lower_split(builder: PlanBuilder, node: Node) -> None:
    x = _source(builder, node)
    rank = len(x.shape)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    outputs = list(node.outputs)
    sizes = (
        [int(v) for v in node.attrs["split"]]
        if node.opset < 13 and "split" in node.attrs
        else (_host_ints(builder, node, 1) if node.opset >= 13 else None)
    )
    if sizes is None:
        parts = int(node.attrs.get("num_outputs", len(outputs)))
        chunk = -(-x.shape[axis] // parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    if sum(sizes) != x.shape[axis] or len(sizes) != len(outputs):
        raise ModelError(f"{node.describe()}: split {sizes} does not cover {x.shape[axis]}")
    start = 0
    for name, size in zip(outputs, sizes, strict=True):
        shape = [*x.shape[:axis], size, *x.shape[axis + 1 :]]
        if name:
            offset = x.offset + start * x.strides[axis]
            _view_or_copy(builder, node, name, x, shape, x.strides, offset)
        start += size
