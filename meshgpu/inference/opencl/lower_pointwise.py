"""Pointwise convolutions (1x1, stride 1, unpadded, one group) on maps whose pixel count
leaves ``conv_gemm6``'s 16-pixel tiles partly empty: ``conv_pointwise`` (channels along the
vector, 6-pixel tiles over the whole batch; :mod:`.kernels.pointwise`).

Where it wins (device time per launch, EfficientNet-B0 at batch 1, docs/benchmarks.md): the
projecting convolutions, more input than output channels, on 14x14 and 7x7 maps (44-47
GMAC/s against 37-40 on 14x14); the expanding ones only on 7x7 maps, where ``conv_gemm6``
drops 15 of every 64 columns; not on maps of a multiple of 16 pixels, where nothing is
dropped and 24 or 40 output channels leave a 16-channel block partly empty."""

from __future__ import annotations

from collections.abc import Callable

from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.pointwise import POINTWISE_CHANNELS, POINTWISE_PIXELS
from meshgpu.inference.opencl.lower_conv_implicit import ConvShape
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32
from meshgpu.inference.opencl.tensors import DeviceTensor, KernelArg

#: ``conv_gemm6``'s pixels per tile: maps with a multiple of this many pixels per image lose
#: nothing to it and stay there.
WIDE_TILE = 16

#: Input channels from which the k loop is long enough to pay for the scalar stores.
MIN_DEPTH = 64

#: Share of dropped ``conv_gemm6`` columns from which this kernel wins even where the
#: stores are many against the k loop (more output than input channels): 7x7 maps (0.31).
MAX_DROP = 0.25

#: Work-items a launch aims for (several tiles each when the layer has more).
WORK_ITEMS = 64


def takes(conv: ConvShape) -> bool:
    """Whether ``conv_pointwise`` computes this convolution (module doc)."""
    return (
        conv.kernel_h == 1
        and conv.kernel_w == 1
        and conv.stride_h == 1
        and conv.stride_w == 1
        and conv.pad_top == 0
        and conv.pad_left == 0
        and conv.groups == 1
        and conv.out_h == conv.height
        and conv.out_w == conv.width
        and conv.channels >= MIN_DEPTH
        and _dropped(conv.out_h * conv.out_w) > 0
        and (conv.channels >= conv.out_channels or _dropped(conv.out_h * conv.out_w) >= MAX_DROP)
    )


def _dropped(pixels: int) -> float:
    """Share of ``conv_gemm6``'s columns on a map of ``pixels`` that are computed and
    dropped (its tiles are 16 pixels of one image)."""
    return -(-pixels // WIDE_TILE) * WIDE_TILE / pixels - 1.0


def lower_pointwise(
    builder: PlanBuilder,
    node: Node,
    conv: ConvShape,
    x: DeviceTensor,
    epilogue: fusion.Epilogue,
    pack: Callable[[int], KernelArg],
    bias: KernelArg,
    output: DeviceTensor,
    channel_offset: int,
) -> None:
    """Queue one ``conv_pointwise`` launch writing ``output`` (from channel
    ``channel_offset`` on: a slice of a channel Concat)."""
    pixels = conv.out_h * conv.out_w
    columns = conv.batch * pixels
    tiles = -(-columns // POINTWISE_PIXELS)
    blocks = -(-conv.out_channels // POINTWISE_CHANNELS)
    per_item = max(1, min(tiles, tiles * blocks // WORK_ITEMS))
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    code, act_a, act_b = epilogue.activation_code
    builder.launch(
        node,
        CORE_SOURCE,
        "conv_pointwise",
        [
            pack(8),
            x.storage,
            output.storage,
            bias,
            residual,
            *(
                i32(v)
                for v in (
                    conv.out_channels,
                    conv.channels,
                    pixels,
                    columns,
                    conv.channels * pixels,
                    channel_offset * pixels,
                    output.shape[1] * pixels,
                    bias is not None,
                    residual is not None,
                    code,
                )
            ),
            f32(act_a),
            f32(act_b),
            i32(per_item),
        ],
        grid=(-(-tiles // per_item), blocks),
        local=(1, 1),
    )
