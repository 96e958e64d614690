"""Lowering of the operators that do real arithmetic: Conv, Gemm, MatMul.

All three end in the 8x8 register-blocked GEMM of :mod:`.kernels.gemm`. Constant operands
(weights) are packed into panels on the host once per session (BatchNormalization and
per-channel Mul/Add already folded in); device operands are packed by a kernel (for Conv that
packing *is* im2col). Convolutions whose groups have fewer than 8 output channels
(depthwise) would waste most of the 8-row tile and run as a direct convolution instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.geometry import window_geometry
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.gemm import (
    GEMM_COLUMN_BLOCKS,
    IM2COL_K_CHUNK,
    PANEL,
)
from meshgpu.inference.opencl.kernels.spatial import DIRECT_CONV_SOURCE
from meshgpu.inference.opencl.plan import (
    DeviceTensor,
    KernelArg,
    PlanBuilder,
    Storage,
    f32,
    i32,
    int_array,
    lowers,
)

#: Convolutions with fewer output channels per group than this run as direct convolution.
DIRECT_CONV_MAX_CHANNELS_PER_GROUP = 4


def pack_host(matrix: np.ndarray) -> np.ndarray:
    """[batch, rows, K] -> panels [batch, ceil(rows/8), K, 8], zero-padded."""
    batch, rows, depth = matrix.shape
    blocks = -(-rows // PANEL)
    padded = np.zeros((batch, blocks * PANEL, depth), dtype=np.float32)
    padded[:, :rows] = matrix
    return np.ascontiguousarray(padded.reshape(batch, blocks, PANEL, depth).transpose(0, 1, 3, 2))


def pack_device(
    builder: PlanBuilder,
    node: Node,
    source: DeviceTensor,
    offsets: list[int],
    rows: int,
    depth: int,
    row_stride: int,
    depth_stride: int,
) -> Storage:
    """Kernel-pack a strided device matrix (one per offset) into panels; returns workspace."""
    blocks = -(-rows // PANEL)
    total = len(offsets) * blocks * depth
    packed = builder.workspace(total * PANEL * 4, f"{node.name} packed operand")
    offsets_buffer = builder.weight(("offsets", tuple(offsets)), lambda: int_array(offsets))
    builder.launch(
        node,
        CORE_SOURCE,
        "pack_panels",
        [
            source.storage,
            packed,
            offsets_buffer,
            i32(rows),
            i32(depth),
            i32(row_stride),
            i32(depth_stride),
            i32(blocks),
            i32(total),
        ],
        total=total,
    )
    return packed


def gemm_launch(
    builder: PlanBuilder,
    node: Node,
    epilogue: fusion.Epilogue,
    a_panels: KernelArg,
    b_panels: KernelArg,
    output: Storage,
    bias: KernelArg,
    *,
    batch: int,
    m: int,
    n: int,
    k: int,
    a_batch_stride: int,
    b_batch_stride: int,
    pixels: int,
    s_batch: int,
    s_image: int,
    s_m: int,
    s_p: int,
    bias_strides: tuple[int, int, int] = (0, 0, 0),
    alpha: float = 1.0,
    beta: float = 1.0,
    out_offset: int = 0,
) -> None:
    """Queue the GEMM with its fused epilogue (bias, residual, activation)."""
    column_blocks = -(-n // PANEL)
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    code, act_a, act_b = epilogue.activation_code
    builder.launch(
        node,
        CORE_SOURCE,
        "gemm_8x8",
        [
            a_panels,
            b_panels,
            output,
            bias,
            residual,
            i32(m),
            i32(n),
            i32(k),
            i32(a_batch_stride),
            i32(b_batch_stride),
            i32(pixels),
            i32(out_offset),
            i32(s_batch),
            i32(s_image),
            i32(s_m),
            i32(s_p),
            i32(bias_strides[0]),
            i32(bias_strides[1]),
            i32(bias_strides[2]),
            f32(alpha),
            f32(beta),
            i32(bias is not None),
            i32(residual is not None),
            i32(code),
            f32(act_a),
            f32(act_b),
        ],
        grid=(-(-column_blocks // GEMM_COLUMN_BLOCKS), -(-m // PANEL), batch),
        local=(1, 1, 1),
    )


@lowers("Conv")
def lower_conv(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    weight_name = node.inputs[1]
    if not builder.is_host(weight_name):
        raise UnsupportedOperatorError(
            f"{node.describe()}: convolution weights computed at run time are not supported"
        )
    weight = np.asarray(builder.host(weight_name), dtype=np.float32)
    if (x.shape and len(x.shape) not in (3, 4)) or weight.ndim != len(x.shape):
        raise UnsupportedOperatorError(
            f"{node.describe()}: only 1-D and 2-D convolutions are supported "
            f"(input shape {x.shape}, weight shape {weight.shape})"
        )
    one_d = len(x.shape) == 3
    x_shape: tuple[int, ...]
    if one_d:
        x_shape = (x.shape[0], x.shape[1], 1, x.shape[2])
        weight = weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2])
    else:
        x_shape = x.shape
    batch, channels, height, width = x_shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    groups = int(node.attrs.get("group", 1))
    if group_channels * groups != channels or out_channels % groups:
        raise ModelError(
            f"{node.describe()}: weight shape {weight.shape} does not fit input channels "
            f"{channels} with group={groups}"
        )
    attrs = dict(node.attrs)
    if one_d:
        for attribute in ("strides", "dilations", "kernel_shape"):
            if attribute in attrs:
                attrs[attribute] = [1, *attrs[attribute]]
        if "pads" in attrs:
            pads = list(attrs["pads"])
            attrs["pads"] = [0, pads[0], 0, pads[1]]
    geometry = window_geometry(node, (height, width), (kernel_h, kernel_w), attrs, ceil_mode=False)
    (out_h, out_w) = geometry.output
    out_shape = (batch, out_channels, out_h, out_w)
    declared_shape = (batch, out_channels, out_w) if one_d else out_shape
    bias_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    bias = (
        np.asarray(builder.host(bias_name), dtype=np.float64).reshape(-1)
        if bias_name and builder.is_host(bias_name)
        else np.zeros(out_channels)
    )
    if bias_name and not builder.is_host(bias_name):
        raise UnsupportedOperatorError(f"{node.describe()}: run-time bias is not supported")
    epilogue = fusion.collect(builder, node.outputs[0], declared_shape, 1)
    epilogue.shift = epilogue.shift + bias * epilogue.scale
    key = (
        "conv",
        weight_name if weight_name in builder.static else id(weight),
        bias_name,
        tuple(n.name for n in epilogue.absorbed),
    )
    scale = epilogue.scale.astype(np.float32)
    folded_bias = builder.weight((*key, "bias"), lambda: epilogue.shift.astype(np.float32))
    groups_out = out_channels // groups
    (pad_top, pad_left), _ = geometry.pads_begin, geometry.pads_end
    stride_h, stride_w = geometry.strides
    dilation_h, dilation_w = geometry.dilations
    if groups_out < DIRECT_CONV_MAX_CHANNELS_PER_GROUP:
        output = builder.new_tensor(epilogue.output, declared_shape)
        weights = builder.weight((*key, "direct"), lambda: weight * scale[:, None, None, None])
        defines = epilogue.act_define() + "#define HAS_BIAS 1\n"
        residual = epilogue.residual.storage if epilogue.residual is not None else None
        if residual is not None:
            defines += "#define HAS_RESIDUAL 1\n"
        rows = batch * out_channels * out_h
        builder.launch(
            node,
            defines + DIRECT_CONV_SOURCE,
            "conv2d_direct",
            [
                x.storage,
                weights,
                folded_bias,
                residual,
                output.storage,
                *(
                    i32(v)
                    for v in (
                        channels,
                        height,
                        width,
                        out_channels,
                        out_h,
                        out_w,
                        kernel_h,
                        kernel_w,
                        stride_h,
                        stride_w,
                        pad_top,
                        pad_left,
                        dilation_h,
                        dilation_w,
                        group_channels,
                        groups_out,
                        rows,
                    )
                ),
            ],
            total=rows,
            local=(8,),
        )
        return
    depth = group_channels * kernel_h * kernel_w
    columns = batch * out_h * out_w
    column_blocks = -(-columns // PANEL)
    panels = builder.packed_weight(
        (*key, "panels"),
        lambda: (weight * scale[:, None, None, None]).reshape(groups, groups_out, depth),
    )
    im2col = builder.workspace(groups * column_blocks * depth * PANEL * 4, f"{node.name} im2col")
    k_chunks = -(-depth // IM2COL_K_CHUNK)
    total = groups * column_blocks * k_chunks
    builder.launch(
        node,
        CORE_SOURCE,
        "im2col_panels",
        [
            x.storage,
            im2col,
            *(
                i32(v)
                for v in (
                    group_channels,
                    height,
                    width,
                    out_h,
                    out_w,
                    kernel_h,
                    kernel_w,
                    stride_h,
                    stride_w,
                    pad_top,
                    pad_left,
                    dilation_h,
                    dilation_w,
                    depth,
                    columns,
                    column_blocks,
                    channels * height * width,
                    k_chunks,
                    total,
                )
            ),
        ],
        total=total,
        local=(8,),
    )
    pixels = out_h * out_w
    # Write straight into this output's slice of a channel Concat when the plan placed it.
    target = None
    if not one_d:
        builder.slice_writers.add(epilogue.output)
        if epilogue.residual is None:
            target = builder.slice_target(epilogue.output, declared_shape)
    if target is not None:
        output, channel_offset = target
        image_stride = output.shape[1] * pixels
    else:
        output = builder.new_tensor(epilogue.output, declared_shape)
        channel_offset, image_stride = 0, out_channels * pixels
    gemm_launch(
        builder,
        node,
        epilogue,
        panels,
        im2col,
        output.storage,
        folded_bias,
        batch=groups,
        m=groups_out,
        n=columns,
        k=depth,
        a_batch_stride=-(-groups_out // PANEL) * PANEL * depth,
        b_batch_stride=column_blocks * PANEL * depth,
        pixels=pixels,
        s_batch=groups_out * pixels,
        s_image=image_stride,
        s_m=pixels,
        s_p=1,
        bias_strides=(groups_out, 1, 0),
        out_offset=channel_offset * pixels,
    )


def _operand_strides(shape: tuple[int, ...]) -> list[int]:
    strides = [0] * len(shape)
    running = 1
    for axis in range(len(shape) - 1, -1, -1):
        strides[axis] = running if shape[axis] != 1 else 0
        running *= shape[axis]
    return strides


@lowers("Gemm")
def lower_gemm(builder: PlanBuilder, node: Node) -> None:
    """Y = alpha * A' B' + beta * C. Weights (B, usually constant) become the M side."""
    a_name, b_name = node.inputs[0], node.inputs[1]
    trans_a = int(node.attrs.get("transA", 0))
    trans_b = int(node.attrs.get("transB", 0))
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    a_shape, b_shape = builder.shape(a_name), builder.shape(b_name)
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise ModelError(f"{node.describe()}: Gemm needs 2-D inputs, got {a_shape}, {b_shape}")
    rows, depth = (a_shape[1], a_shape[0]) if trans_a else a_shape
    depth_b, cols = (b_shape[1], b_shape[0]) if trans_b else b_shape
    if depth != depth_b:
        raise ModelError(f"{node.describe()}: inner dimensions differ ({a_shape} x {b_shape})")
    out_shape = (rows, cols)
    c_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    bias: KernelArg = None
    bias_strides = (0, 0, 0)
    epilogue = fusion.collect(builder, node.outputs[0], out_shape, 1, allow_affine=False)
    if c_name is not None and beta != 0.0:
        c_shape = builder.shape(c_name)
        if len(c_shape) > 2 or np.broadcast_shapes(c_shape, out_shape) != out_shape:
            raise ModelError(f"{node.describe()}: C of shape {c_shape} does not broadcast")
        strides = _operand_strides((1,) * (2 - len(c_shape)) + tuple(c_shape))
        bias = builder.tensor(node, c_name).storage
        bias_strides = (0, strides[1], strides[0])
    # M side: columns of Y, from B'; N side: rows of Y, from A'.
    m_panels = _panels(builder, node, b_name, cols, depth, (1, cols) if not trans_b else (depth, 1))
    n_panels = _panels(builder, node, a_name, rows, depth, (depth, 1) if not trans_a else (1, rows))
    output = builder.new_tensor(epilogue.output, out_shape)
    gemm_launch(
        builder,
        node,
        epilogue,
        m_panels,
        n_panels,
        output.storage,
        bias,
        batch=1,
        m=cols,
        n=rows,
        k=depth,
        a_batch_stride=0,
        b_batch_stride=0,
        pixels=max(rows, 1),
        s_batch=0,
        s_image=0,
        s_m=1,
        s_p=cols,
        bias_strides=bias_strides,
        alpha=alpha,
        beta=beta,
    )


def _panels(
    builder: PlanBuilder,
    node: Node,
    name: str,
    rows: int,
    depth: int,
    strides: tuple[int, int],
    offsets: list[int] | None = None,
) -> KernelArg:
    """Panels of a 2-D operand (element (r, k) at r*strides[0] + k*strides[1])."""
    offsets = offsets or [0]
    if builder.is_host(name):
        source = np.asarray(builder.host(name), dtype=np.float32).reshape(-1)

        def make() -> np.ndarray:
            matrices = [
                np.lib.stride_tricks.as_strided(
                    source[offset:],
                    shape=(rows, depth),
                    strides=(strides[0] * 4, strides[1] * 4),
                )
                for offset in offsets
            ]
            return pack_host(np.stack(matrices))

        key: tuple[Any, ...] = ("panels", name, rows, depth, strides, tuple(offsets))
        if name not in builder.static:
            key = (*key, id(builder))  # a per-plan constant: never shared between plans
        panels: KernelArg = builder.weight(key, make)
        return panels
    tensor = builder.tensor(node, name)
    return pack_device(builder, node, tensor, offsets, rows, depth, strides[0], strides[1])


@lowers("MatMul")
def lower_matmul(builder: PlanBuilder, node: Node) -> None:
    """numpy.matmul semantics: 1-D promotion and broadcast batch dimensions."""
    a_name, b_name = node.inputs
    a_shape, b_shape = builder.shape(a_name), builder.shape(b_name)
    if not a_shape or not b_shape:
        raise ModelError(f"{node.describe()}: MatMul of a scalar")
    a_full = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b_full = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    rows, depth = a_full[-2:]
    depth_b, cols = b_full[-2:]
    if depth != depth_b:
        raise ModelError(f"{node.describe()}: inner dimensions differ ({a_shape} x {b_shape})")
    try:
        batch_shape = tuple(np.broadcast_shapes(a_full[:-2], b_full[:-2]))
    except ValueError as error:
        raise ModelError(f"{node.describe()}: batch dimensions do not broadcast") from error
    out_full = (*batch_shape, rows, cols)
    out_shape = list(out_full)
    if len(b_shape) == 1:
        out_shape.pop(-1)
    if len(a_shape) == 1:
        out_shape.pop(-2 if len(b_shape) != 1 else -1)
    batch = int(np.prod(batch_shape)) if batch_shape else 1
    epilogue = fusion.collect(
        builder,
        node.outputs[0],
        tuple(out_shape),
        max(len(out_shape) - 1, 0),
        allow_affine=len(b_shape) != 1,
        allow_scale=False,
    )
    bias: KernelArg = None
    if not epilogue.is_identity_affine:
        key = ("matmul-bias", node.name, tuple(n.name for n in epilogue.absorbed))
        bias = builder.weight(key, lambda: epilogue.shift.astype(np.float32))

    def offsets(shape: tuple[int, ...]) -> tuple[list[int], int]:
        own = shape[:-2]
        matrix = shape[-2] * shape[-1]
        if int(np.prod(own or (1,))) == 1:
            return [0], 0
        padded = (1,) * (len(batch_shape) - len(own)) + own
        strides = _operand_strides(padded)
        result = []
        for index in np.ndindex(*batch_shape):
            result.append(sum(i * s for i, s in zip(index, strides, strict=True)) * matrix)
        return result, 1

    a_offsets, a_batched = offsets(a_full)
    b_offsets, b_batched = offsets(b_full)
    m_panels = _panels(builder, node, b_name, cols, depth, (1, cols), b_offsets)
    n_panels = _panels(builder, node, a_name, rows, depth, (depth, 1), a_offsets)
    m_blocks, n_blocks = -(-cols // PANEL), -(-rows // PANEL)
    output = builder.new_tensor(epilogue.output, out_shape)
    gemm_launch(
        builder,
        node,
        epilogue,
        m_panels,
        n_panels,
        output.storage,
        bias,
        batch=batch,
        m=cols,
        n=rows,
        k=depth,
        a_batch_stride=b_batched * m_blocks * PANEL * depth,
        b_batch_stride=a_batched * n_blocks * PANEL * depth,
        pixels=max(rows, 1),
        s_batch=rows * cols,
        s_image=0,
        s_m=1,
        s_p=cols,
        bias_strides=(0, 1, 0),
    )
