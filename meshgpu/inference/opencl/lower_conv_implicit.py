"""Convolution as an implicit GEMM (kernels in :mod:`.kernels.implicit_conv`): the choice of
column layout, whether it beats im2col, the zero-padded copy of the input, and the launch.

The implicit path computes some dropped columns (the padding of each output row) to make
every tap a contiguous vector load; im2col computes none but writes and rereads a
``K x N`` matrix, and its GEMM (``gemm_8x8``) uses the slower 8x8 tile. Measured on this
engine's kernels (docs/opencl-engine.md): im2col costs about as much per ``(k, n)`` element
as ``IMPLICIT_WASTE_BUDGET`` output channels of GEMM work, and the 6x16 tile of the
stride-1 path is ``WIDE_TILE_GAIN`` faster than 8x8. So the implicit path is taken when
``output channels per group * (dropped fraction - tile gain)`` stays under the budget:
always for unpadded pointwise convolutions (nothing dropped) and for 3x3 layers on maps of
13x13 and larger, not for 512-channel 3x3 layers on 7x7 maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.implicit_conv import (
    CONV6_ROWS,
    CONV_COLUMN_BLOCKS,
    CONV_COLUMN_TILES,
    CONV_ROW_PARALLELISM,
    CONV_WORK_ITEMS,
)
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32
from meshgpu.inference.opencl.registry import i32 as _i32
from meshgpu.inference.opencl.tensors import FLOAT_BYTES, DeviceTensor, KernelArg, Storage
from meshgpu.inference.opencl.tuning import Variant

PANEL = 8

#: im2col per (k, n) element costs this many output channels of GEMM work (module doc).
IMPLICIT_WASTE_BUDGET = 32

#: Time the 6x16 tile saves over 8x8, as a fraction of the GEMM (module doc).
WIDE_TILE_GAIN = 0.2


@dataclass(frozen=True)
class ConvShape:
    """Everything about one convolution the layout and launch need (NCHW, 2-D)."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    groups: int
    out_h: int
    out_w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    dilation_h: int
    dilation_w: int

    @property
    def group_channels(self) -> int:
        return self.channels // self.groups

    @property
    def groups_out(self) -> int:
        return self.out_channels // self.groups


@dataclass(frozen=True)
class ImplicitLayout:
    """Padded input planes ``plane_h x plane_w`` and ``row_pitch`` columns per output row."""

    plane_h: int
    plane_w: int
    row_pitch: int
    columns: int
    copy_input: bool

    def dropped_fraction(self, conv: ConvShape) -> float:
        return self.columns / (conv.out_h * conv.out_w) - 1.0


def choose_layout(conv: ConvShape) -> ImplicitLayout | None:
    """Wide rows for stride 1, padded rows for horizontal stride 2; None where im2col is
    cheaper (see the module doc) or for other strides, which the vector loads cannot take."""
    if not (_is_wide(conv) or conv.stride_w == 2):
        return None
    need_h = (conv.out_h - 1) * conv.stride_h + (conv.kernel_h - 1) * conv.dilation_h + 1
    need_w = (conv.out_w - 1) * conv.stride_w + (conv.kernel_w - 1) * conv.dilation_w + 1
    in_place = (
        conv.pad_top == 0 and conv.pad_left == 0 and need_h <= conv.height and need_w <= conv.width
    )
    plane_h, plane_w = (conv.height, conv.width) if in_place else (need_h, need_w)
    if conv.stride_h == 1 and conv.stride_w == 1:
        pitch = plane_w  # wide rows: every run of columns is contiguous
    else:
        pitch = -(-conv.out_w // PANEL) * PANEL
    layout = ImplicitLayout(
        plane_h, plane_w, pitch, (conv.out_h - 1) * pitch + conv.out_w, not in_place
    )
    gain = WIDE_TILE_GAIN if _is_wide(conv) else 0.0
    if conv.groups_out * (layout.dropped_fraction(conv) - gain) > IMPLICIT_WASTE_BUDGET:
        return None
    return layout


def _gemm6_variants(
    tiles: int, row_tiles: int, images: int, chosen: tuple[int, int], position: int
) -> list[Variant]:
    """``conv_gemm6`` launch shapes to measure: the rule's (column tiles, row tiles) per
    work-item first, then each count moved alone to 1, 2, 4 or all column tiles and to 1
    or all row tiles (at most seven launches, each timed four times, per shape)."""
    per_item, rows_per_item = chosen
    shapes = [chosen]
    shapes += [(columns, rows_per_item) for columns in (1, 2, 4, tiles)]
    shapes += [(per_item, rows) for rows in (1, row_tiles)]
    variants: dict[tuple[int, int, int], Variant] = {}
    for columns, rows in shapes:
        columns, rows = min(columns, tiles), min(rows, row_tiles)
        grid = (-(-tiles // columns), -(-row_tiles // rows), images)
        if grid not in variants:
            variants[grid] = Variant(grid, position, columns, ((position + 1, rows),))
    return list(variants.values())


def queue_gemm6(
    builder: PlanBuilder,
    node: Node,
    args: list[KernelArg],
    activation: tuple[float, float],
    *,
    tiles: int,
    row_tiles: int,
    images: int,
    tuning_shape: tuple[int, ...],
) -> None:
    """Queue ``conv_gemm6`` over ``tiles`` 16-column tiles, ``row_tiles`` 6-row tiles and
    ``images`` (groups times images): ``args`` are the kernel's arguments up to ``act``; the
    rule below picks the tiles per work-item and the tuner measures its neighbours."""
    per_item = tiles if row_tiles * images >= CONV_ROW_PARALLELISM else CONV_COLUMN_TILES
    column_items = -(-tiles // per_item)
    row_groups = min(row_tiles, -(-CONV_WORK_ITEMS // (column_items * images)))
    rows_per_item = -(-row_tiles // row_groups)
    full: list[KernelArg] = [
        *args,
        f32(activation[0]),
        f32(activation[1]),
        _i32(per_item),
        _i32(rows_per_item),
    ]
    builder.launch(
        node,
        CORE_SOURCE,
        "conv_gemm6",
        full,
        grid=(column_items, -(-row_tiles // rows_per_item), images),
        local=(1, 1, 1),
        # the rule's tile counts first; neighbours measured per device (tuning.py)
        variants=_gemm6_variants(
            tiles, row_tiles, images, (per_item, rows_per_item), len(full) - 2
        ),
        tuning_shape=tuning_shape,
        prefer_first_variant=True,
    )


def _is_wide(conv: ConvShape) -> bool:
    return conv.stride_h == 1 and conv.stride_w == 1


def _tap_offsets(conv: ConvShape, layout: ImplicitLayout) -> np.ndarray:
    ci, ky, kx = np.meshgrid(
        np.arange(conv.group_channels),
        np.arange(conv.kernel_h),
        np.arange(conv.kernel_w),
        indexing="ij",
    )
    offsets = (
        ci * layout.plane_h * layout.plane_w
        + ky * conv.dilation_h * layout.plane_w
        + kx * conv.dilation_w
    )
    return offsets.reshape(-1).astype(np.int32)


def _floats_read(conv: ConvShape, layout: ImplicitLayout, image_stride: int) -> int:
    """One past the last float any column block loads (dropped lanes included)."""
    tile = 2 * PANEL if _is_wide(conv) else PANEL
    last_block = (-(-layout.columns // tile) - 1) * tile
    oy, ox = divmod(last_block, layout.row_pitch)
    start = oy * conv.stride_h * layout.plane_w + ox * conv.stride_w
    group_stride = conv.group_channels * layout.plane_h * layout.plane_w
    last_tap = (
        (conv.group_channels - 1) * layout.plane_h * layout.plane_w
        + (conv.kernel_h - 1) * conv.dilation_h * layout.plane_w
        + (conv.kernel_w - 1) * conv.dilation_w
    )
    span = 2 * PANEL  # 16 floats: two 8-wide loads (wide rows) or one strided 16 (stride 2)
    return (
        (conv.batch - 1) * image_stride + (conv.groups - 1) * group_stride + start + last_tap + span
    )


def queue_padded_copy(
    builder: PlanBuilder,
    node: Node,
    x: DeviceTensor,
    planes: int,
    image: tuple[int, int],
    plane: tuple[int, int],
    pads: tuple[int, int],
    label: str,
    floats: int = 0,
) -> Storage:
    """Queue ``pad_planes``: copy each of ``x``'s ``planes`` ``image``-sized planes into a
    zeroed ``plane``-sized one at offset ``pads`` (top, left), so that the convolution
    reading it needs no bounds checks. Invoked by the implicit GEMM, Winograd and depthwise
    lowerings; the workspace holds at least ``floats`` floats (for kernels reading past the
    last plane). Returns the padded copy."""
    plane_h, plane_w = plane
    padded = builder.workspace(max(floats, planes * plane_h * plane_w) * FLOAT_BYTES, label)
    rows = planes * plane_h
    builder.launch(
        node,
        CORE_SOURCE,
        "pad_planes",
        [x.storage, padded, *(_i32(v) for v in (*image, plane_h, plane_w, *pads, rows))],
        total=rows,
        local=(8,),
    )
    return padded


def lower_implicit(
    builder: PlanBuilder,
    node: Node,
    conv: ConvShape,
    layout: ImplicitLayout,
    x: DeviceTensor,
    epilogue: fusion.Epilogue,
    pack: Callable[[int], KernelArg],
    bias: KernelArg,
    output: DeviceTensor,
    channel_offset: int,
) -> bool:
    """Queue the (padding copy and) implicit GEMM; False if the input cannot take the
    over-reads (an uploaded constant with no padding copy), leaving the caller to im2col."""
    plane = layout.plane_h * layout.plane_w
    image_stride = conv.channels * plane
    needed = _floats_read(conv, layout, image_stride)
    source: KernelArg
    if layout.copy_input:
        padded = queue_padded_copy(
            builder,
            node,
            x,
            conv.batch * conv.channels,
            (conv.height, conv.width),
            (layout.plane_h, layout.plane_w),
            (conv.pad_top, conv.pad_left),
            f"{node.name} padded input",
            floats=needed,
        )
        source = padded
    else:
        if not builder.reserve_reads(x, needed * FLOAT_BYTES):
            return False
        source = x.storage
    offsets = builder.weight(
        (
            "tap offsets",
            conv.group_channels,
            conv.kernel_h,
            conv.kernel_w,
            conv.dilation_h,
            conv.dilation_w,
            layout.plane_h,
            layout.plane_w,
        ),
        lambda: _tap_offsets(conv, layout),
    )
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    code, act_a, act_b = epilogue.activation_code
    pixels = conv.out_h * conv.out_w
    head: list[KernelArg] = [source, output.storage, bias, residual, offsets]
    flags = [bias is not None, residual is not None, code]
    strides = [conv.group_channels * plane, image_stride, channel_offset * pixels]
    strides.append(output.shape[1] * pixels)
    depth = conv.group_channels * conv.kernel_h * conv.kernel_w
    if _is_wide(conv):
        sizes = [conv.groups_out, depth, layout.columns, layout.row_pitch]
        sizes += [conv.out_h, conv.out_w, conv.groups]
        queue_gemm6(
            builder,
            node,
            [pack(CONV6_ROWS), *head, *(_i32(v) for v in (*sizes, *strides, *flags))],
            (act_a, act_b),
            tiles=-(-layout.columns // (2 * PANEL)),
            row_tiles=-(-conv.groups_out // CONV6_ROWS),
            images=conv.groups * conv.batch,
            tuning_shape=(conv.groups, conv.batch, conv.groups_out, depth, layout.columns),
        )
        return True
    blocks = -(-layout.columns // PANEL)
    sizes = [conv.groups_out, depth, layout.columns, layout.row_pitch, layout.plane_w]
    sizes += [conv.stride_h, conv.stride_w, conv.out_h, conv.out_w, conv.groups]
    builder.launch(
        node,
        CORE_SOURCE,
        "conv_gemm_s2",
        [
            pack(PANEL),
            *head,
            *(_i32(v) for v in (*sizes, *strides, *flags)),
            f32(act_a),
            f32(act_b),
        ],
        grid=(
            -(-blocks // CONV_COLUMN_BLOCKS),
            -(-conv.groups_out // PANEL),
            conv.groups * conv.batch,
        ),
        local=(1, 1, 1),
    )
    return True
