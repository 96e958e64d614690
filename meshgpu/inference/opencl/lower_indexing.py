"""Lowering of operators that move elements by index: Gather with run-time indices,
GatherElements, GatherND, ScatterElements, ScatterND, Where, CumSum, ArgMax/ArgMin, TopK,
and the operators whose index pattern is fixed once shapes are known (Tile, DepthToSpace,
SpaceToDepth, Trilu, Pad's edge/reflect/wrap modes), which gather through an index map
computed on the host with numpy (the map is the operator applied to ``arange``).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.indexing import INDEXING_SOURCE
from meshgpu.inference.opencl.lower_tensor import (
    _count,
    _host_ints,
    broadcast_strides,
    contiguous_strides,
    lower_gather_constant,
    typed_source,
)
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import i32, int_array, lowers
from meshgpu.inference.opencl.tensors import DeviceTensor

#: ScatterElements/ScatterND ``reduction`` attribute -> COMBINE(a, b).
COMBINES = {
    "none": "b",
    "add": "a + b",
    "mul": "a * b",
    "max": "(a > b ? a : b)",
    "min": "(a < b ? a : b)",
}
"""A scatter's reduction of the element so far (``a``) with an update (``b``). max and min
are onnxruntime's: a NaN update replaces the element, a number replaces a NaN element
(ONNX's reference evaluator keeps the NaN; tests/inference/test_opencl_nan.py)."""


def _source(data: Any, index: Any = dtypes.INT64, extra: str = "") -> str:
    return typed_source(extra + INDEXING_SOURCE, T=data, TI=index)


def _index_tensor(builder: PlanBuilder, node: Node, name: str) -> DeviceTensor:
    dtype = builder.dtype(name)
    if dtype not in (np.dtype(np.int64), np.dtype(np.int32)):
        raise ModelError(f"{node.describe()}: indices {name!r} are {dtype}, not int32/int64")
    return builder.tensor(node, name, dtype)


def _copy_into(
    builder: PlanBuilder, node: Node, source: DeviceTensor, target: DeviceTensor
) -> None:
    from meshgpu.inference.opencl.lower_tensor import strided_copy

    strides = contiguous_strides(source.shape)
    strided_copy(
        builder,
        node,
        source.storage,
        target.storage,
        source.shape,
        strides,
        strides,
        dtype=source.dtype,
    )


def _map_gather(
    builder: PlanBuilder,
    node: Node,
    x: DeviceTensor,
    output_name: str,
    index_map: np.ndarray,
    fill: float = 0,
) -> None:
    """Output ``index_map.shape`` with element i = x.flat[index_map.flat[i]] (fill where -1)."""
    if x.storage.nbytes // max(x.dtype.itemsize, 1) >= 2**31:
        raise UnsupportedOperatorError(f"{node.describe()}: tensor too large for an index map")
    flat = np.ascontiguousarray(index_map, dtype=np.int32).reshape(-1)
    key = ("index-map", node.name, tuple(x.shape), flat.tobytes())
    map_buffer = builder.weight(key, lambda: flat)
    output = builder.new_tensor(output_name, index_map.shape, x.dtype)
    fill_type = np.uint8 if x.dtype == dtypes.BOOL else x.dtype
    total = int(flat.size)
    builder.launch(
        node,
        _source(x.dtype),
        "map_gather",
        [
            x.storage,
            output.storage,
            map_buffer,
            cast(np.generic, np.asarray(fill).astype(fill_type)[()]),
            i32(total),
        ],
        total=total,
        per_item=64,
    )


#: A Gather whose slices after the axis are at least this long copies a slice per work-item
#: (``gather_rows``): BERT's embedding lookup at batch 8 (128 rows of 64) took 41 us element
#: by element.
GATHER_ROW_LENGTH = 16


def _positions(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(_count(shape), dtype=np.int64).reshape(shape)


# -- gathers and scatters ------------------------------------------------------------------
@lowers("Gather", typed=True)
def lower_gather(builder: PlanBuilder, node: Node) -> None:
    """Few constant indices: strided copies; otherwise the gather kernel (embeddings)."""
    if builder.is_host(node.inputs[1]) and np.asarray(builder.host(node.inputs[1])).size <= 64:
        lower_gather_constant(builder, node)
        return
    data = builder.tensor(node, node.inputs[0])
    indices = _index_tensor(builder, node, node.inputs[1])
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(data.shape) if axis < 0 else axis
    out_shape = [*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]]
    output = builder.new_tensor(node.outputs[0], out_shape, data.dtype)
    total = _count(out_shape)
    inner = _count(data.shape[axis + 1 :])
    rows = total // inner if inner else 0
    by_rows = inner >= GATHER_ROW_LENGTH
    builder.launch(
        node,
        _source(data.dtype, indices.dtype),
        "gather_rows" if by_rows else "gather",
        [
            data.storage,
            indices.storage,
            output.storage,
            i32(_count(indices.shape)),
            i32(data.shape[axis]),
            i32(inner),
            i32(rows if by_rows else total),
        ],
        total=rows if by_rows else total,
    )


@lowers("GatherElements", "ScatterElements", typed=True)
def lower_gather_elements(builder: PlanBuilder, node: Node) -> None:
    data = builder.tensor(node, node.inputs[0])
    indices = _index_tensor(builder, node, node.inputs[1])
    rank = len(data.shape)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    values = [*indices.shape, *contiguous_strides(data.shape)]
    meta = builder.weight(("meta", "elements", tuple(values)), lambda: int_array(values))
    total = _count(indices.shape)
    source = f"#define NDIM {rank}\n"
    if node.op == "GatherElements":
        output = builder.new_tensor(node.outputs[0], indices.shape, data.dtype)
        builder.launch(
            node,
            _source(data.dtype, indices.dtype, source),
            "gather_elements",
            [
                data.storage,
                indices.storage,
                output.storage,
                meta,
                i32(axis),
                i32(data.shape[axis]),
                i32(total),
            ],
            total=total,
        )
        return
    reduction = str(node.attrs.get("reduction", "none"))
    if reduction not in COMBINES:
        raise UnsupportedOperatorError(f"{node.describe()}: reduction={reduction!r}")
    updates = builder.tensor(node, node.inputs[2], data.dtype)
    output = builder.new_tensor(node.outputs[0], data.shape, data.dtype)
    _copy_into(builder, node, data, output)
    source += f"#define COMBINE(a, b) ({COMBINES[reduction]})\n"
    builder.launch(
        node,
        _source(data.dtype, indices.dtype, source),
        "scatter_elements",
        [
            updates.storage,
            indices.storage,
            output.storage,
            meta,
            i32(axis),
            i32(data.shape[axis]),
            i32(total),
        ],
        total=1,
        local=(1,),
    )


@lowers("GatherND", "ScatterND", typed=True)
def lower_gather_nd(builder: PlanBuilder, node: Node) -> None:
    data = builder.tensor(node, node.inputs[0])
    indices = _index_tensor(builder, node, node.inputs[1])
    batch_dims = int(node.attrs.get("batch_dims", 0))
    k = indices.shape[-1]
    if k + batch_dims > len(data.shape):
        raise ModelError(f"{node.describe()}: {k} indices into a rank-{len(data.shape)} tensor")
    strides = contiguous_strides(data.shape)
    indexed = list(range(batch_dims, batch_dims + k))
    values = [*(data.shape[d] for d in indexed), *(strides[d] for d in indexed)] or [0]
    meta = builder.weight(("meta", "nd", tuple(values)), lambda: int_array(values))
    inner = _count(data.shape[batch_dims + k :])
    rows = _count(indices.shape[:-1])
    if node.op == "GatherND":
        out_shape = [*indices.shape[:-1], *data.shape[batch_dims + k :]]
        output = builder.new_tensor(node.outputs[0], out_shape, data.dtype)
        total = _count(out_shape)
        rows_per_batch = max(_count(indices.shape[batch_dims:-1]), 1)
        builder.launch(
            node,
            _source(data.dtype, indices.dtype),
            "gather_nd",
            [
                data.storage,
                indices.storage,
                output.storage,
                meta,
                i32(k),
                i32(inner),
                i32(rows_per_batch),
                i32(_count(data.shape[batch_dims:])),
                i32(total),
            ],
            total=total,
        )
        return
    if batch_dims:
        raise UnsupportedOperatorError(f"{node.describe()}: batch_dims={batch_dims}")
    reduction = str(node.attrs.get("reduction", "none"))
    if reduction not in COMBINES:
        raise UnsupportedOperatorError(f"{node.describe()}: reduction={reduction!r}")
    updates = builder.tensor(node, node.inputs[2], data.dtype)
    output = builder.new_tensor(node.outputs[0], data.shape, data.dtype)
    _copy_into(builder, node, data, output)
    builder.launch(
        node,
        _source(data.dtype, indices.dtype, f"#define COMBINE(a, b) ({COMBINES[reduction]})\n"),
        "scatter_nd",
        [updates.storage, indices.storage, output.storage, meta, i32(k), i32(inner), i32(rows)],
        total=inner,
    )


@lowers("Where", typed=True)
def lower_where(builder: PlanBuilder, node: Node) -> None:
    names = node.inputs[:3]
    shapes = [builder.shape(n) for n in names]
    try:
        out_shape = tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError as error:
        raise ModelError(f"{node.describe()}: shapes {shapes} do not broadcast") from error
    dtype = next((builder.dtype(n) for n in names[1:] if not builder.is_host(n)), None)
    dtype = dtype or builder.dtype(names[1])
    condition = builder.tensor(node, names[0], dtypes.BOOL)
    x = builder.tensor(node, names[1], dtype)
    y = builder.tensor(node, names[2], dtype)
    values = [*out_shape] + [s for shape in shapes for s in broadcast_strides(shape, out_shape)]
    values = values or [1]
    rank = max(len(out_shape), 1)
    if not out_shape:
        values = [1, 0, 0, 0]
    meta = builder.weight(("meta", "where", tuple(values)), lambda: int_array(values))
    output = builder.new_tensor(node.outputs[0], out_shape, dtype)
    total = _count(out_shape)
    builder.launch(
        node,
        _source(dtype, extra=f"#define NDIM {rank}\n"),
        "where_select",
        [condition.storage, x.storage, y.storage, output.storage, meta, i32(total)],
        total=total,
    )


# -- scans and selections --------------------------------------------------------------------
def _axis_split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(outer, length, inner) of ``shape`` around ``axis``."""
    return _count(shape[:axis]), shape[axis], _count(shape[axis + 1 :])


@lowers("CumSum", typed=True)
def lower_cumsum(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    axis_values = _host_ints(builder, node, 1)
    if not axis_values:
        raise ModelError(f"{node.describe()}: needs an axis")
    rank = len(x.shape)
    axis = axis_values[0] + rank if axis_values[0] < 0 else axis_values[0]
    outer, length, inner = _axis_split(x.shape, axis)
    output = builder.new_tensor(node.outputs[0], x.shape, x.dtype)
    total = outer * inner
    builder.launch(
        node,
        _source(x.dtype),
        "cumulative_sum",
        [
            x.storage,
            output.storage,
            i32(length),
            i32(inner),
            i32(int(node.attrs.get("exclusive", 0))),
            i32(int(node.attrs.get("reverse", 0))),
            i32(total),
        ],
        total=total,
    )


@lowers("ArgMax", "ArgMin", typed=True)
def lower_arg_reduce(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    rank = len(x.shape)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    outer, length, inner = _axis_split(x.shape, axis)
    if length == 0:
        raise ModelError(f"{node.describe()}: an empty axis has no extreme")
    keep = int(node.attrs.get("keepdims", 1))
    out_shape = (
        [1 if d == axis else s for d, s in enumerate(x.shape)]
        if keep
        else [s for d, s in enumerate(x.shape) if d != axis]
    )
    output = builder.new_tensor(node.outputs[0], out_shape, dtypes.INT64)
    better = "(v > best)" if node.op == "ArgMax" else "(v < best)"
    total = outer * inner
    builder.launch(
        node,
        _source(x.dtype, extra=f"#define BETTER(v, best) {better}\n"),
        "arg_reduce",
        [
            x.storage,
            output.storage,
            i32(length),
            i32(inner),
            i32(int(node.attrs.get("select_last_index", 0))),
            i32(total),
        ],
        total=total,
    )


@lowers("TopK", typed=True)
def lower_top_k(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    rank = len(x.shape)
    if node.opset < 10:
        k = int(node.attrs["k"])
    else:
        k_values = _host_ints(builder, node, 1)
        if not k_values:
            raise ModelError(f"{node.describe()}: needs k")
        k = k_values[0]
    axis = int(node.attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    outer, length, inner = _axis_split(x.shape, axis)
    if not 0 <= k <= length:
        raise ModelError(f"{node.describe()}: k={k} for an axis of {length}")
    if not int(node.attrs.get("sorted", 1)):
        pass  # unsorted output may be in any order; sorted is one of them
    out_shape = [k if d == axis else s for d, s in enumerate(x.shape)]
    values = builder.new_tensor(node.outputs[0] or f"{node.name}/values", out_shape, x.dtype)
    indices = builder.new_tensor(
        node.outputs[1] if len(node.outputs) > 1 and node.outputs[1] else f"{node.name}/indices",
        out_shape,
        dtypes.INT64,
    )
    largest = int(node.attrs.get("largest", 1))
    better = "((v) > (best))" if largest else "((v) < (best))"
    total = outer * inner
    builder.launch(
        node,
        _source(x.dtype, extra=f"#define BETTER(v, best) {better}\n"),
        "top_k",
        [x.storage, values.storage, indices.storage, i32(length), i32(inner), i32(k), i32(total)],
        total=total,
    )


# -- fixed index patterns ------------------------------------------------------------------
@lowers("Tile", typed=True)
def lower_tile(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    repeats = _host_ints(builder, node, 1)
    if repeats is None or len(repeats) != len(x.shape):
        raise ModelError(f"{node.describe()}: repeats {repeats} for shape {x.shape}")
    _map_gather(builder, node, x, node.outputs[0], np.tile(_positions(x.shape), repeats))


@lowers("DepthToSpace", "SpaceToDepth", typed=True)
def lower_depth_space(builder: PlanBuilder, node: Node) -> None:
    """The ONNX spec's reshape-transpose-reshape, applied to the element positions."""
    x = builder.tensor(node, node.inputs[0])
    if len(x.shape) != 4:
        raise ModelError(f"{node.describe()}: needs a 4-D input, got {x.shape}")
    b = int(node.attrs["blocksize"])
    n, c, h, w = x.shape
    positions = _positions(x.shape)
    if node.op == "DepthToSpace":
        if c % (b * b):
            raise ModelError(f"{node.describe()}: {c} channels for blocksize {b}")
        if str(node.attrs.get("mode", "DCR")) == "DCR":
            moved = positions.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            moved = positions.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
        index_map = moved.reshape(n, c // (b * b), h * b, w * b)
    else:
        if h % b or w % b:
            raise ModelError(f"{node.describe()}: {h}x{w} for blocksize {b}")
        blocks = positions.reshape(n, c, h // b, b, w // b, b)
        if str(node.attrs.get("mode", "DCR")) == "DCR":
            moved = blocks.transpose(0, 3, 5, 1, 2, 4)
        else:  # CRD (opset 28)
            moved = blocks.transpose(0, 1, 3, 5, 2, 4)
        index_map = moved.reshape(n, c * b * b, h // b, w // b)
    _map_gather(builder, node, x, node.outputs[0], index_map)


@lowers("Trilu", typed=True)
def lower_trilu(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    if len(x.shape) < 2:
        raise ModelError(f"{node.describe()}: needs a matrix, got {x.shape}")
    k_values = _host_ints(builder, node, 1)
    k = k_values[0] if k_values else 0
    rows, cols = x.shape[-2:]
    keep = (
        np.triu(np.ones((rows, cols), bool), k)
        if int(node.attrs.get("upper", 1))
        else np.tril(np.ones((rows, cols), bool), k)
    )
    positions = _positions(x.shape)
    _map_gather(builder, node, x, node.outputs[0], np.where(keep, positions, -1))


def pad_with_map(
    builder: PlanBuilder, node: Node, x: DeviceTensor, pads: list[int], mode: str, value: Any
) -> None:
    """Pad in any mode and with negative pads (cropping): numpy's pad of the positions."""
    rank = len(x.shape)
    positions = _positions(x.shape)
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[rank + i], 0)) for i in range(rank))
    positions = positions[crop]
    widths = [(max(pads[i], 0), max(pads[rank + i], 0)) for i in range(rank)]
    numpy_mode: dict[str, Any] = {
        "constant": "constant",
        "edge": "edge",
        "reflect": "reflect",
        "wrap": "wrap",
    }
    if mode not in numpy_mode:
        raise UnsupportedOperatorError(f"{node.describe()}: Pad mode {mode!r}")
    if mode == "constant":
        index_map = np.pad(positions, widths, mode="constant", constant_values=-1)
    else:
        if positions.size == 0:
            raise ModelError(f"{node.describe()}: {mode} padding of an empty tensor")
        index_map = np.pad(positions, widths, mode=numpy_mode[mode])
    _map_gather(builder, node, x, node.outputs[0], index_map, value)
