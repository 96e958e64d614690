"""Lowering of ConvTranspose (1-D, 2-D and 3-D): groups, strides, pads, ``output_padding``,
``output_shape``, dilations and ``auto_pad``, per the ONNX operator spec.

Constant weights take a GEMM and a gather (:mod:`.kernels.transposed_conv`): the GEMM is
the 1x1 convolution of :mod:`.lower_conv_implicit` with ``C_out/group * taps`` output
channels per group, so it runs on the engine's fastest tile; the gather adds up each output
element's taps and applies the bias and what :mod:`.fusion` absorbed after the node, and
writes straight into a channel slice of a following Concat. Summing one output element at
a time straight from the input and weights (``conv_transpose_direct``, kept for weights
computed at run time) cost U-Net's two 2x2 stride-2 layers 118 ms of a 164 ms batch-8
inference; the GEMM and gather take a few milliseconds (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes, fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.transposed_conv import TRANSPOSED_CONV_SOURCE
from meshgpu.inference.opencl.lower_conv_implicit import ConvShape, choose_layout, lower_implicit
from meshgpu.inference.opencl.lower_tensor import _count
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import i32, lowers
from meshgpu.inference.opencl.tensors import FLOAT_BYTES, DeviceTensor, KernelArg


def transposed_geometry(
    node: Node, spatial: list[int], kernel: list[int]
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(output sizes, strides, pads at the start, dilations, pads at the end)."""
    rank = len(spatial)
    strides = [int(v) for v in node.attrs.get("strides", [1] * rank)]
    dilations = [int(v) for v in node.attrs.get("dilations", [1] * rank)]
    output_padding = [int(v) for v in node.attrs.get("output_padding", [0] * rank)]
    pads = [int(v) for v in node.attrs.get("pads", [0] * (2 * rank))]
    auto_pad = str(node.attrs.get("auto_pad", "NOTSET"))
    full = [
        strides[i] * (spatial[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
        for i in range(rank)
    ]
    output_shape = [int(v) for v in node.attrs.get("output_shape", [])]
    if len(output_shape) > rank:
        output_shape = output_shape[-rank:]
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = output_shape or [spatial[i] * strides[i] for i in range(rank)]
        total = [full[i] - target[i] for i in range(rank)]
        # SAME_UPPER puts the smaller half first; SAME_LOWER and an explicit output_shape
        # the larger (a negative total, output_shape past the natural size, pads the end)
        upper = auto_pad == "SAME_UPPER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin, strict=True)]
        return target, strides, begin, dilations, end
    if auto_pad == "VALID":
        pads = [0] * (2 * rank)
    out = [full[i] - pads[i] - pads[rank + i] for i in range(rank)]
    return out, strides, pads[:rank], dilations, pads[rank:]


@lowers("ConvTranspose")
def lower_conv_transpose(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    w_shape = builder.shape(node.inputs[1])
    if len(x.shape) not in (3, 4, 5) or len(w_shape) != len(x.shape):
        raise UnsupportedOperatorError(
            f"{node.describe()}: only 1-D, 2-D and 3-D transposed convolutions "
            f"(input {x.shape}, weights {w_shape})"
        )
    groups = int(node.attrs.get("group", 1))
    batch, in_channels = x.shape[:2]
    if w_shape[0] != in_channels or in_channels % groups:
        raise ModelError(f"{node.describe()}: weights {w_shape} for {in_channels} channels")
    out_channels = w_shape[1] * groups
    kernel = list(w_shape[2:])
    spatial = list(x.shape[2:])
    out, strides, begin, dilations, _ = transposed_geometry(node, spatial, kernel)
    if any(o <= 0 for o in out):
        raise ModelError(f"{node.describe()}: output size {out}")
    out_shape = (batch, out_channels, *out)
    lead = 3 - len(spatial)  # every rank runs as 3-D with unit leading dimensions
    geometry = (
        [1] * lead + spatial,
        [1] * lead + out,
        [1] * lead + kernel,
        [1] * lead + strides,
        [0] * lead + begin,
        [1] * lead + dilations,
    )
    bias_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    constant = builder.is_host(node.inputs[1]) and (bias_name is None or builder.is_host(bias_name))
    if constant and _lower_as_gemm(builder, node, x, out_shape, groups, bias_name, *geometry):
        return
    weights = builder.tensor(node, node.inputs[1])
    bias: KernelArg = None
    if bias_name:
        bias = builder.tensor(node, bias_name).storage
    output = builder.new_tensor(node.outputs[0], out_shape)
    total = _count(out_shape)
    sizes, outs, kernels, steps, pads, dils = geometry
    builder.launch(
        node,
        TRANSPOSED_CONV_SOURCE,
        "conv_transpose_direct",
        [
            x.storage,
            weights.storage,
            bias,
            output.storage,
            *(
                i32(v)
                for v in (
                    in_channels,
                    *sizes,
                    out_channels,
                    *outs,
                    *kernels,
                    *steps,
                    *pads,
                    *dils,
                    groups,
                    total,
                )
            ),
        ],
        total=total,
    )


def _lower_as_gemm(
    builder: PlanBuilder,
    node: Node,
    x: DeviceTensor,
    out_shape: tuple[int, ...],
    groups: int,
    bias_name: str | None,
    sizes: list[int],
    outs: list[int],
    kernels: list[int],
    steps: list[int],
    pads: list[int],
    dils: list[int],
) -> bool:
    """The GEMM into columns and the gather (module doc); False where the 1x1 GEMM cannot
    read ``x`` in place (an uploaded constant), leaving the direct kernel to run it."""
    batch, in_channels = x.shape[:2]
    out_channels = out_shape[1]
    group_in, group_out = in_channels // groups, out_channels // groups
    taps = kernels[0] * kernels[1] * kernels[2]
    depth, height, width = sizes
    conv = ConvShape(
        batch,
        in_channels,
        depth * height,
        width,
        groups * group_out * taps,
        groups,
        depth * height,
        width,
        1,
        1,
        1,
        1,
        0,
        0,
        1,
        1,
    )
    layout = choose_layout(conv)
    if layout is None or layout.copy_input:
        return False
    epilogue = fusion.collect(builder, node.outputs[0], out_shape, 1)
    weight_name = node.inputs[1]
    weight = np.asarray(builder.host(weight_name), dtype=np.float32)
    bias = (
        np.asarray(builder.host(bias_name), dtype=np.float64).reshape(-1)
        if bias_name
        else np.zeros(out_channels)
    )
    epilogue.shift = epilogue.shift + bias * epilogue.scale
    key = (
        "conv transpose",
        weight_name if weight_name in builder.static else id(weight),
        bias_name,
        tuple(n.name for n in epilogue.absorbed),
    )
    scale = epilogue.scale.astype(np.float32)

    def left_operand() -> np.ndarray:
        """[group][(output channel, tap)][input channel]: the GEMM's left operand, each
        output channel's taps scaled by what the epilogue multiplies it by."""
        per_input = scale.reshape(groups, group_out)[np.arange(in_channels) // group_in]
        scaled = weight * per_input.reshape(in_channels, group_out, *([1] * (weight.ndim - 2)))
        return scaled.reshape(groups, group_in, group_out * taps).transpose(0, 2, 1)

    columns = DeviceTensor(
        builder.workspace(
            batch * conv.out_channels * depth * height * width * FLOAT_BYTES,
            f"{node.name} columns",
        ),
        (batch, conv.out_channels, depth * height, width),
        dtypes.FLOAT32,
    )
    identity = fusion.Epilogue(columns.storage.label, np.ones(1), np.zeros(1))
    if not lower_implicit(
        builder,
        node,
        conv,
        layout,
        x,
        identity,
        lambda panel: builder.packed_weight((*key, "rows", panel), left_operand, panel),
        None,
        columns,
        0,
    ):
        return False
    folded_bias = builder.weight((*key, "bias"), lambda: epilogue.shift.astype(np.float32))
    target = None
    if len(out_shape) == 4:
        builder.slice_writers.add(epilogue.output)
        if epilogue.residual is None:
            target = builder.slice_target(epilogue.output, out_shape)
    if target is not None:
        output, channel_offset = target
    else:
        output, channel_offset = builder.new_tensor(epilogue.output, out_shape), 0
    pixels = outs[0] * outs[1] * outs[2]
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    defines = epilogue.act_define() + "#define HAS_BIAS 1\n"
    if epilogue.activation:
        defines += "#define HAS_ACT 1\n"
    if residual is not None:
        defines += "#define HAS_RESIDUAL 1\n"
    rows = batch * out_channels * outs[0] * outs[1]
    builder.launch(
        node,
        defines + TRANSPOSED_CONV_SOURCE,
        "col2im_gather",
        [
            columns.storage,
            folded_bias,
            residual,
            output.storage,
            *(
                i32(v)
                for v in (
                    out_channels,
                    *sizes,
                    *outs,
                    *kernels,
                    *steps,
                    *pads,
                    *dils,
                    channel_offset,
                    output.shape[1] * pixels,
                    rows,
                )
            ),
        ],
        total=rows,
    )
    return True
