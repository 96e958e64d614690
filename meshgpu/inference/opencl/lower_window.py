"""Lowering of windowed and reducing operators: MaxPool, AveragePool, global pools,
Softmax/LogSoftmax (opset-dependent axis semantics), LRN and the Reduce* family."""

from __future__ import annotations

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes
from meshgpu.inference.opencl.geometry import window_geometry
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.spatial import (
    INTEGER_REDUCTIONS,
    REDUCE_SOURCE,
    REDUCTIONS,
)
from meshgpu.inference.opencl.lower_tensor import _count, contiguous_strides
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32, int_array, lowers


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


# -- reductions ----------------------------------------------------------------------------
@lowers(*REDUCTIONS, typed=True)
def lower_reduce(builder: PlanBuilder, node: Node) -> None:
    """Reduce* with ``axes`` as attribute (ReduceSum before 13, the others before 18) or
    input, ``keepdims`` and ``noop_with_empty_axes``; float in float, integers and bool in
    their own type."""
    x = builder.tensor(node, node.inputs[0])
    if dtypes.is_float(x.dtype):
        init, combine, final = REDUCTIONS[node.op]
    elif node.op in INTEGER_REDUCTIONS:
        init, combine, final = INTEGER_REDUCTIONS[node.op]
        low, high = ("0", "1") if x.dtype == dtypes.BOOL else dtypes.LIMITS[dtypes.c_type(x.dtype)]
        init = init.replace("LOW", low).replace("HIGH", high)
    else:
        raise UnsupportedOperatorError(
            f"the OpenCL backend cannot run {node.describe()} on {dtypes.type_name(x.dtype)}"
        )
    rank = len(x.shape)
    axes_from_input = node.opset >= (13 if node.op == "ReduceSum" else 18)
    if axes_from_input and len(node.inputs) > 1 and node.inputs[1]:
        if not builder.is_host(node.inputs[1]):
            raise UnsupportedOperatorError(f"{node.describe()}: axes must be constant")
        axes = [int(a) for a in np.asarray(builder.host(node.inputs[1])).reshape(-1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])] if not axes_from_input else []
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            builder.alias(node.outputs[0], x, x.shape)
            return
        axes = list(range(rank))
    axes = sorted({a + rank if a < 0 else a for a in axes})
    keep = int(node.attrs.get("keepdims", 1))
    strides = contiguous_strides(x.shape)
    kept = [d for d in range(rank) if d not in axes]
    out_dims = [x.shape[d] for d in kept] or [1]
    out_strides = [strides[d] for d in kept] or [0]
    reduced_dims = [x.shape[d] for d in axes]
    reduced_strides = [strides[d] for d in axes]
    out_shape = (
        [1 if d in axes else x.shape[d] for d in range(rank)]
        if keep
        else [x.shape[d] for d in kept]
    )
    meta_values = [*out_dims, *out_strides, *reduced_dims, *reduced_strides]
    meta = builder.weight(("meta", "reduce", tuple(meta_values)), lambda: int_array(meta_values))
    if (
        node.op in ("ReduceMean", "ReduceMax")
        and x.dtype == dtypes.FLOAT32
        and axes == list(range(rank - len(axes), rank))
    ):
        # trailing axes (a global pool over each leading row): the pooling kernel reads
        # each row contiguously instead of decoding every element's coordinates
        output = builder.new_tensor(node.outputs[0], out_shape)
        kernel_name = "global_pool_avg" if node.op == "ReduceMean" else "global_pool_max"
        rows = _count(x.shape[: rank - len(axes)])
        builder.launch(
            node,
            CORE_SOURCE,
            kernel_name,
            [x.storage, output.storage, i32(_count(reduced_dims)), i32(rows)],
            total=rows,
        )
        return
    output = builder.new_tensor(node.outputs[0], out_shape, x.dtype)
    source = (
        dtypes.source_prefix(x.dtype)
        + f"#define T {dtypes.c_type(x.dtype)}\n"
        + (
            f"#define NOUT {len(out_dims)}\n#define NRED {len(reduced_dims)}\n"
            f"#define INIT ({init})\n#define COMBINE(acc, v) ({combine})\n"
            f"#define FINAL(acc, count) ({final})\n" + REDUCE_SOURCE
        )
    )
    total = _count(out_shape)
    builder.launch(
        node,
        source,
        "reduce",
        [x.storage, output.storage, meta, i32(_count(reduced_dims)), i32(total)],
        total=total,
    )
