"""Lowering of the normalisations that compute their statistics at run time:
LayerNormalization, RMSNormalization, InstanceNormalization and GroupNormalization.

All four normalise contiguous rows of the input (the trailing axes from ``axis``, a
channel's pixels, a group's channels and pixels), so one kernel serves them: a row's mean
and variance in two passes (float32, as onnxruntime accumulates), then
``(x - mean) / sqrt(var + epsilon) * scale + bias``. What differs is where the element
``j`` of row ``r`` finds its scale: at ``((r % srows) * slen + j) / sdiv`` (LayerNorm:
``j``; InstanceNorm: the channel ``r % C``; GroupNorm: the channel of element ``j`` of
group ``r % G``).
"""

from __future__ import annotations

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.normalization import NORMALIZATION_SOURCE
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.lower_tensor import _count, row_steps
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32, lowers
from meshgpu.inference.opencl.tensors import KernelArg, contiguous_strides


def _parameter(
    builder: PlanBuilder, node: Node, position: int, length: int, shape: tuple[int, ...]
) -> KernelArg:
    """Scale or bias input ``position`` as a device vector of ``length`` elements
    (broadcast to ``shape`` first when it is a constant); None when absent."""
    if len(node.inputs) <= position or not node.inputs[position]:
        return None
    name = node.inputs[position]
    if builder.is_host(name):
        value = np.asarray(builder.host(name), dtype=np.float32)
        try:
            full = np.ascontiguousarray(np.broadcast_to(value, shape)).reshape(-1)
        except ValueError as error:
            raise ModelError(f"{node.describe()}: {name!r} of shape {value.shape}") from error
        key = ("norm", name, tuple(shape)) if name in builder.static else None
        if key is None:
            builder.values[f"{node.name}/{position}"] = full
            return builder.tensor(node, f"{node.name}/{position}").storage
        buffer: KernelArg = builder.weight(key, lambda: full)
        return buffer
    tensor = builder.tensor(node, name)
    if _count(tensor.shape) != length:
        raise UnsupportedOperatorError(
            f"{node.describe()}: a run-time {name!r} of shape {tensor.shape} broadcast over {shape}"
        )
    return tensor.storage


def _launch(
    builder: PlanBuilder,
    node: Node,
    rows: int,
    length: int,
    scale: KernelArg,
    bias: KernelArg,
    scale_map: tuple[int, int, int],
    *,
    rms: bool = False,
    statistics: tuple[str, str] | None = None,
    statistics_shape: tuple[int, ...] = (),
    fuse_activation: bool = False,
) -> None:
    """One ``normalize_rows`` launch; with ``fuse_activation`` a following activation
    (Relu, LeakyRelu, Clip, Sigmoid, Tanh: U-Net's InstanceNorm then LeakyRelu) is applied
    by the same launch."""
    x = builder.tensor(node, node.inputs[0])
    defines = ""
    output_name = node.outputs[0]
    if fuse_activation:
        epilogue = fusion.collect(
            builder, output_name, x.shape, 1, allow_affine=False, allow_residual=False
        )
        if epilogue.activation:
            defines = f"#define NORM_ACT(v) ({epilogue.activation})\n"
        output_name = epilogue.output
    output = builder.new_tensor(output_name, x.shape)
    mean: KernelArg = None
    inverse: KernelArg = None
    if statistics:
        mean_name, inverse_name = statistics
        if mean_name:
            mean = builder.new_tensor(mean_name, statistics_shape).storage
        if inverse_name:
            inverse = builder.new_tensor(inverse_name, statistics_shape).storage
    epsilon = float(node.attrs.get("epsilon", 1e-5))
    builder.launch(
        node,
        VECTOR_SOURCE + defines + NORMALIZATION_SOURCE,
        "normalize_rows",
        [
            x.storage,
            output.storage,
            scale,
            bias,
            mean,
            inverse,
            i32(length),
            *(i32(v) for v in scale_map),
            f32(epsilon),
            i32(int(rms)),
            i32(scale is not None),
            i32(bias is not None),
            i32(rows),
        ],
        total=rows,
    )


@lowers("LayerNormalization", "RMSNormalization")
def lower_layer_norm(builder: PlanBuilder, node: Node) -> None:
    shape = builder.shape(node.inputs[0])
    rank = len(shape)
    axis = int(node.attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise ModelError(f"{node.describe()}: axis {axis} for rank {rank}")
    rows, length = _count(shape[:axis]), _count(shape[axis:])
    normalized = tuple(shape[axis:])
    scale = _parameter(builder, node, 1, length, normalized)
    bias = (
        _parameter(builder, node, 2, length, normalized) if node.op != "RMSNormalization" else None
    )
    outputs = [*node.outputs[1:3], "", ""][:2]
    layout = _rows_of_view(builder, node.inputs[0], axis)
    # The product normalises its rows itself where it can do so eight lanes at a time:
    # contiguous rows, or a channels-first map of a multiple of 8 pixels. ConvNeXt's 2x2
    # maps (rows folded across images, each row's channels read one scalar at a time, in
    # every column group) took longer so than the separate launch.
    vector_rows = node.inputs[0] not in builder.views or (layout is not None and layout[0] % 8 == 0)
    if node.op == "LayerNormalization" and not any(outputs) and axis == rank - 1 and vector_rows:
        from meshgpu.inference.opencl.lower_matmul import lower_normalized_product

        if lower_normalized_product(builder, node, scale, bias):
            return  # the product that reads it normalises its rows first
    if layout is not None and node.op == "LayerNormalization" and not any(outputs):
        view = builder.views[node.inputs[0]]
        inner, outer, stride = layout
        back = _transpose_back(builder, node.outputs[0], tuple(shape), view.strides)
        if back is not None:  # written channels-first: the permute back is this launch's
            builder.absorb(back[0])
            output = builder.new_tensor(back[0].outputs[0], back[1])
        else:
            output = builder.new_tensor(node.outputs[0], shape)
        vector = inner % 8 == 0
        builder.launch(
            node,
            VECTOR_SOURCE + NORMALIZATION_SOURCE,
            "normalize_rows_t8" if vector else "normalize_rows_strided",
            [
                view.storage,
                output.storage,
                scale,
                bias,
                i32(length),
                i32(inner),
                i32(outer),
                i32(stride),
                i32(view.offset),
                f32(float(node.attrs.get("epsilon", 1e-5))),
                i32(scale is not None),
                i32(bias is not None),
                i32(back is not None),
                i32(rows // 8 if vector else rows),
            ],
            total=rows // 8 if vector else rows,
        )
        return
    _launch(
        builder,
        node,
        rows,
        length,
        scale,
        bias,
        (1, length, 1),
        rms=node.op == "RMSNormalization",
        statistics=(outputs[0], outputs[1]) if any(outputs) else None,
        statistics_shape=(*shape[:axis], *([1] * (rank - axis))),
    )


def _rows_of_view(builder: PlanBuilder, name: str, axis: int) -> tuple[int, int, int] | None:
    """For a view normalised over its last axis whose rows step through memory as
    ``(r / inner) * outer + r % inner`` (a channels-first tensor permuted to channels-last):
    (inner, outer, element stride); else None."""
    view = builder.views.get(name)
    if view is None or axis != len(view.shape) - 1 or len(view.shape) < 2:
        return None
    steps = row_steps(view.shape[:-1], view.strides[:-1])
    if steps is None:
        return None
    return steps[0], steps[1], view.strides[-1]


def _transpose_back(
    builder: PlanBuilder, name: str, shape: tuple[int, ...], strides: tuple[int, ...]
) -> tuple[Node, tuple[int, ...]] | None:
    """The Transpose that alone reads ``name`` (a LayerNorm's output of ``shape``, laid
    out like its input view of ``strides``) and its output shape, when writing each
    element at its view position gives that Transpose's contiguous output: ConvNeXt's
    permute back to channels-first after a LayerNorm."""
    consumer = builder.sole_consumer(name)
    if consumer is None or consumer.op != "Transpose" or not consumer.outputs[0]:
        return None
    rank = len(shape)
    perm = [int(p) for p in consumer.attrs.get("perm", list(range(rank - 1, -1, -1)))]
    if sorted(perm) != list(range(rank)):
        return None
    out_shape = tuple(shape[p] for p in perm)
    out_strides = contiguous_strides(out_shape)
    written = [0] * rank  # where index i along each axis of the LayerNorm output lands
    for position, axis in enumerate(perm):
        written[axis] = out_strides[position]
    if any(written[d] != strides[d] for d in range(rank) if shape[d] > 1):
        return None
    return consumer, out_shape


@lowers("InstanceNormalization")
def lower_instance_norm(builder: PlanBuilder, node: Node) -> None:
    shape = builder.shape(node.inputs[0])
    if len(shape) < 3:
        raise ModelError(f"{node.describe()}: needs N, C and spatial axes, got {shape}")
    channels, pixels = shape[1], _count(shape[2:])
    scale = _parameter(builder, node, 1, channels, (channels,))
    bias = _parameter(builder, node, 2, channels, (channels,))
    _launch(
        builder,
        node,
        shape[0] * channels,
        pixels,
        scale,
        bias,
        (channels, pixels, pixels),
        fuse_activation=True,
    )


@lowers("GroupNormalization")
def lower_group_norm(builder: PlanBuilder, node: Node) -> None:
    """Opset 21 scales per channel; opset 18 (deprecated) per group."""
    shape = builder.shape(node.inputs[0])
    if len(shape) < 2:
        raise ModelError(f"{node.describe()}: needs N and C axes, got {shape}")
    groups = int(node.attrs["num_groups"])
    channels, pixels = shape[1], _count(shape[2:])
    if groups <= 0 or channels % groups:
        raise ModelError(f"{node.describe()}: {channels} channels in {groups} groups")
    length = channels // groups * pixels
    if node.opset >= 21:
        scale = _parameter(builder, node, 1, channels, (channels,))
        bias = _parameter(builder, node, 2, channels, (channels,))
        scale_map = (groups, length, pixels)
    else:
        scale = _parameter(builder, node, 1, groups, (groups,))
        bias = _parameter(builder, node, 2, groups, (groups,))
        scale_map = (groups, length, length)
    _launch(builder, node, shape[0] * groups, length, scale, bias, scale_map, fuse_activation=True)
