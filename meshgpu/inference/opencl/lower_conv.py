"""Lowering of Conv: BatchNormalization and per-channel constants folded into the weights,
im2col into packed panels, then the register-blocked GEMM with a fused epilogue; outputs
may go straight into a channel slice of a Concat. Groups with fewer than 4 output channels
(depthwise) run as a direct convolution instead, where an 8-row tile would be mostly
padding. Measurements behind these choices: docs/opencl-engine.md.
"""

from __future__ import annotations

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import (
    fusion,
    lower_depthwise,
    lower_excitation,
    lower_pointwise,
    lower_winograd,
)
from meshgpu.inference.opencl.geometry import window_geometry
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.gemm import IM2COL_K_CHUNK, PANEL
from meshgpu.inference.opencl.kernels.spatial import DIRECT_CONV_SOURCE
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.lower_conv_implicit import ConvShape, choose_layout, lower_implicit
from meshgpu.inference.opencl.lower_linear import gemm_launch
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import i32, lowers
from meshgpu.inference.opencl.tensors import KernelArg

#: Convolutions with fewer output channels per group than this run as direct convolution.
DIRECT_CONV_MAX_CHANNELS_PER_GROUP = 4


@lowers("Conv")
def lower_conv(builder: PlanBuilder, node: Node) -> None:
    if lower_excitation.lower_gate(builder, node):
        return
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
        weights = builder.weight((*key, "direct"), lambda: weight * scale[:, None, None, None])
        if (
            group_channels == 1
            and groups_out == 1
            and lower_depthwise.takes_padded_path(
                builder,
                epilogue,
                batch,
                channels,
                (out_h, out_w),
                (kernel_h, kernel_w),
                stride_w,
                lower_depthwise.plane_geometry(
                    (height, width),
                    (kernel_h, kernel_w),
                    (out_h, out_w),
                    (stride_h, stride_w),
                    (pad_top, pad_left),
                    (dilation_h, dilation_w),
                ),
            )
        ):
            lower_depthwise.lower_depthwise(
                builder,
                node,
                x,
                (batch, channels, height, width),
                (kernel_h, kernel_w),
                (out_h, out_w),
                (stride_h, stride_w),
                (pad_top, pad_left),
                (dilation_h, dilation_w),
                weights,
                folded_bias,
                epilogue,
                declared_shape,
            )
            return
        output = builder.new_tensor(epilogue.output, declared_shape)
        defines = epilogue.act_define() + "#define HAS_BIAS 1\n"
        residual = epilogue.residual.storage if epilogue.residual is not None else None
        if residual is not None:
            defines += "#define HAS_RESIDUAL 1\n"
        rows = batch * out_channels * out_h
        builder.launch(
            node,
            VECTOR_SOURCE + defines + DIRECT_CONV_SOURCE,
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

    def pack(panel: int) -> KernelArg:
        packed: KernelArg = builder.packed_weight(
            (*key, "panels", panel),
            lambda: (weight * scale[:, None, None, None]).reshape(groups, groups_out, depth),
            panel,
        )
        return packed

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
    conv = ConvShape(
        batch,
        channels,
        height,
        width,
        out_channels,
        groups,
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
    )
    if lower_pointwise.takes(conv):
        lower_pointwise.lower_pointwise(
            builder, node, conv, x, epilogue, pack, folded_bias, output, channel_offset
        )
        return
    if lower_winograd.takes(conv):
        lower_winograd.lower_winograd(
            builder,
            node,
            conv,
            x,
            epilogue,
            lambda: weight * scale[:, None, None, None],
            key,
            folded_bias,
            output,
            channel_offset,
        )
        return
    layout = choose_layout(conv)
    if layout is not None and lower_implicit(
        builder,
        node,
        conv,
        layout,
        x,
        epilogue,
        pack,
        folded_bias,
        output,
        channel_offset,
    ):
        return
    panels = pack(PANEL)
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
