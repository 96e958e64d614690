"""Stride-1 3x3 convolutions as Winograd F(2x2, 3x3) (kernels and the algebra in
:mod:`.kernels.winograd`): a zero-padded copy of the input (``pad_planes``), the input
transform, 16 products as the groups of one ``conv_gemm6`` launch, and the output transform
with the convolution's epilogue. Four launches where the implicit GEMM takes two, but 16
multiplies per tile and channel pair instead of 36 (measured gains in
docs/opencl-engine.md).

Numerics: F(2x2, 3x3)'s transforms have coefficients 0, +-1/2 and +-1, so its float32
error stays within a few units in the last place of the direct sum, far inside the
conformance bound (``1e-4 * max(1, |ref|)``); the larger tiles (F(4x4, 3x3)) were not
taken for that reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.implicit_conv import CONV6_ROWS
from meshgpu.inference.opencl.kernels.winograd import WINOGRAD_TILES
from meshgpu.inference.opencl.lower_conv_implicit import (
    ConvShape,
    queue_gemm6,
    queue_padded_copy,
)
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32
from meshgpu.inference.opencl.tensors import FLOAT_BYTES, DeviceTensor, KernelArg

#: Input and output channels from which the transforms pay for themselves. The products
#: save work in proportion to ``in x out`` channels, the transforms cost in proportion to
#: ``in + out``; CPU time per layer against the implicit GEMM on the Zen 3 build machine:
#: 0.72-0.79 at 128-512 channels (ResNet-50's 28x28, 14x14 and 7x7 layers), 0.96-1.00 at
#: 64 on 56x56, 0.92-1.41 on SqueezeNet's 16-64 channel layers.
MIN_CHANNELS = 128

#: Columns of the products' tile (``conv_gemm6``): the transformed rows are padded to it.
GEMM_TILE = 16

#: Work-items each transform aims for.
TRANSFORM_WORK_ITEMS = 256

#: Positions of the 4x4 transform: the products of one convolution.
POSITIONS = 16

#: F(2x2, 3x3)'s filter transform G (Lavin and Gray, section 4.1).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def takes(conv: ConvShape) -> bool:
    """Whether this convolution runs as Winograd F(2x2, 3x3): 3x3, stride 1, dilation 1,
    one group, enough channels on both sides (``MIN_CHANNELS``)."""
    return (
        conv.kernel_h == 3
        and conv.kernel_w == 3
        and conv.stride_h == 1
        and conv.stride_w == 1
        and conv.dilation_h == 1
        and conv.dilation_w == 1
        and conv.groups == 1
        and conv.channels >= MIN_CHANNELS
        and conv.out_channels >= MIN_CHANNELS
    )


def transformed_weights(weight: np.ndarray) -> np.ndarray:
    """``U[p, o, c]``: ``G g G^T`` of each ``[o, c]`` 3x3 filter, positions ``p = 4 i + j``
    first (the products' groups)."""
    u: np.ndarray = np.einsum("ik,ockl,jl->ijoc", _G, weight.astype(np.float64), _G)
    return u.reshape(POSITIONS, weight.shape[0], weight.shape[1]).astype(np.float32)


def lower_winograd(
    builder: PlanBuilder,
    node: Node,
    conv: ConvShape,
    x: DeviceTensor,
    epilogue: fusion.Epilogue,
    scaled_weight: Callable[[], np.ndarray],
    weight_key: tuple[object, ...],
    bias: KernelArg,
    output: DeviceTensor,
    channel_offset: int,
) -> None:
    """Queue the padding copy, the two transforms and the products for ``conv`` writing
    ``output`` (from channel ``channel_offset`` on)."""
    tiles_h, tiles_w = -(-conv.out_h // 2), -(-conv.out_w // 2)
    groups_per_row = -(-tiles_w // WINOGRAD_TILES)
    tiles = conv.batch * tiles_h * tiles_w
    pitch = -(-tiles // GEMM_TILE) * GEMM_TILE
    # Padded planes: 2 rows per tile row plus 2; each group of 8 tiles loads 16 floats at
    # 2 tx0 and at 2 tx0 + 2, so a row holds 16 floats per group plus 2.
    plane_h, plane_w = 2 * tiles_h + 2, 16 * groups_per_row + 2
    planes = conv.batch * conv.channels
    padded = queue_padded_copy(
        builder,
        node,
        x,
        planes,
        (conv.height, conv.width),
        (plane_h, plane_w),
        (conv.pad_top, conv.pad_left),
        f"{node.name} winograd padded input",
    )
    transformed = builder.workspace(
        POSITIONS * conv.channels * pitch * FLOAT_BYTES, f"{node.name} winograd input"
    )
    items = planes * tiles_h * groups_per_row
    per_item = _per_item(items)
    builder.launch(
        node,
        CORE_SOURCE,
        "winograd_input",
        [
            padded,
            transformed,
            *(
                i32(v)
                for v in (
                    conv.channels,
                    plane_h,
                    plane_w,
                    tiles_h,
                    tiles_w,
                    pitch,
                    groups_per_row,
                    items,
                    per_item,
                )
            ),
        ],
        grid=(-(-items // per_item),),
        local=(1,),
    )
    # The output transform reads 8 tiles from any tile start: 8 floats of slack at the end.
    products = builder.workspace(
        (POSITIONS * conv.out_channels * pitch + WINOGRAD_TILES) * FLOAT_BYTES,
        f"{node.name} winograd products",
    )
    weights = builder.packed_weight(
        (*weight_key, "winograd", CONV6_ROWS),
        lambda: transformed_weights(scaled_weight()),
        CONV6_ROWS,
    )
    offsets = builder.weight(
        ("winograd tap offsets", conv.channels, pitch),
        lambda: np.arange(conv.channels, dtype=np.int32) * pitch,
    )
    # One 1x1 "convolution" per position over one row of `pitch` columns: M=out, K=in.
    sizes = (conv.out_channels, conv.channels, pitch, pitch, 1, pitch, POSITIONS)
    strides = (conv.channels * pitch, 0, 0, 0)
    queue_gemm6(
        builder,
        node,
        [
            weights,
            transformed,
            products,
            None,
            None,
            offsets,
            *(i32(v) for v in (*sizes, *strides, 0, 0, 0)),
        ],
        (0.0, 0.0),
        tiles=pitch // GEMM_TILE,
        row_tiles=-(-conv.out_channels // CONV6_ROWS),
        images=POSITIONS,
        tuning_shape=(POSITIONS, 1, conv.out_channels, conv.channels, pitch),
    )
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    code, act_a, act_b = epilogue.activation_code
    pixels = conv.out_h * conv.out_w
    items = conv.batch * conv.out_channels * tiles_h * groups_per_row
    builder.launch(
        node,
        CORE_SOURCE,
        "winograd_output",
        [
            products,
            output.storage,
            bias,
            residual,
            *(
                i32(v)
                for v in (
                    conv.out_channels,
                    conv.out_h,
                    conv.out_w,
                    tiles_h,
                    tiles_w,
                    pitch,
                    groups_per_row,
                    items,
                    channel_offset * pixels,
                    output.shape[1] * pixels,
                    bias is not None,
                    residual is not None,
                    code,
                )
            ),
            f32(act_a),
            f32(act_b),
            i32(_per_item(items)),
        ],
        grid=(-(-items // _per_item(items)),),
        local=(1,),
    )


def _per_item(items: int) -> int:
    """Groups of 8 tiles per work-item of a transform: about ``TRANSFORM_WORK_ITEMS``
    work-items of one work-item each (explicitly vectorised code; PoCL's work-item loop
    over a larger group only adds overhead)."""
    return max(1, items // TRANSFORM_WORK_ITEMS)
