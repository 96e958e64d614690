"""Depthwise convolution (one input and one output channel per group) on padded planes:
the padding copy and the launch of :mod:`.kernels.depthwise`.

The direct kernel it replaces (``conv2d_direct``, still used for other small groups) reads
the unpadded input and checks bounds: its 8-wide blocks took the vector path only for
undilated rows of at least 8 columns, so EfficientNet's 7-pixel rows and LR-ASPP's
dilated 5x5 layers ran one element at a time. Copying the input into padded planes costs
one pass over it and one launch; every tap is then a plain vector load. That launch is
worth it only where the convolution is large enough: below ``PADDED_MIN_MACS``
multiply-adds the time saved (a few tens of microseconds on ConvNeXt's batch-1 layers, less
than nothing on its 2x2 maps) does not pay for one more command on PoCL (about 25 us of
wall time each, more on a loaded machine), so small layers keep the direct kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyopencl as cl

from meshgpu.errors import ModelError
from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.geometry import window_geometry
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.depthwise import (
    DEPTHWISE_PLANE_SOURCE,
    DEPTHWISE_SOURCE,
    PLANE_GROUP,
)
from meshgpu.inference.opencl.kernels.elementwise import FLOAT32_EXPRESSIONS, unary_parameters
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.lower_conv_implicit import queue_padded_copy
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32
from meshgpu.inference.opencl.tensors import FLOAT_BYTES, DeviceTensor, KernelArg, Storage

#: Activations after a depthwise layer that its launch computes on whole vectors (their
#: expressions hold for float and float8 alike): EfficientNet's SiLU, MobileNetV3's
#: HardSwish. ``fusion.collect`` leaves these to a separate vectorised launch after a GEMM
#: (docs/opencl-engine.md); here the epilogue is vectorised too, so the launch is saved.
TAIL_ACTIVATIONS = ("Swish", "HardSwish", "HardSigmoid")

#: Activations in front of a depthwise layer that ``depthwise_plane`` applies while it
#: copies its input plane (:func:`defers`): the unary launch between the expanding 1x1
#: convolution and the depthwise one, and its pass over the tensor, are saved.
INPUT_ACTIVATIONS = ("Relu", "HardSwish", "Swish")

#: Output columns per vector block.
BLOCK = 8

#: Multiply-adds from which a depthwise layer takes the padded path (module doc).
PADDED_MIN_MACS = 1 << 20

#: Output elements a ``depthwise_plane`` work-group aims for on a CPU: small planes (7x7,
#: 14x14) are taken several to a group, since each group costs PoCL a fixed scheduling
#: overhead that a 49-pixel plane's work does not cover.
GROUP_OUTPUTS = 2048

#: Work-groups per compute unit that a launch keeps at least, where it has the planes.
GROUPS_PER_UNIT = 8

#: Share of the device's local memory one padded plane may take (the rest is left to the
#: runtime and to other work-groups on the same compute unit).
LOCAL_MEMORY_SHARE = 2


@dataclass(frozen=True)
class PlaneGeometry:
    """Where a depthwise layer's input sits in its zero-padded plane, and the plane's size."""

    kernel: tuple[int, int]
    output: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int]
    dilations: tuple[int, int]
    plane: tuple[int, int]


def plane_geometry(
    input_size: tuple[int, int],
    kernel: tuple[int, int],
    output_size: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int],
    dilations: tuple[int, int],
) -> PlaneGeometry:
    """The padded plane: every tap of every 8-column block of every output row reads
    inside it (the last block's surplus lanes, and a last odd row's pair, included)."""
    out_h, out_w = output_size
    last_block = (-(-out_w // BLOCK) - 1) * BLOCK
    plane_w = last_block * strides[1] + (kernel[1] - 1) * dilations[1] + BLOCK * strides[1]
    # rows for an even number of output rows (depthwise_plane computes them in pairs)
    plane_h = (out_h + out_h % 2 - 1) * strides[0] + (kernel[0] - 1) * dilations[0] + 1
    # the input must fit too (pads on the far side may be smaller than what it overhangs)
    plane_w = max(plane_w, pads[1] + input_size[1])
    plane_h = max(plane_h, pads[0] + input_size[0])
    if strides[1] == 2:
        plane_w += plane_w % 2  # depthwise_plane splits stride-2 rows into even and odd halves
    return PlaneGeometry(kernel, output_size, strides, pads, dilations, (plane_h, plane_w))


def fits_local_memory(builder: PlanBuilder, geometry: PlaneGeometry) -> bool:
    """Whether ``depthwise_plane`` can hold the padded plane in local memory."""
    plane_h, plane_w = geometry.plane
    need = (plane_h * plane_w + _work_items(builder)) * FLOAT_BYTES
    return (
        geometry.strides[1] in (1, 2)
        and need <= int(builder.device.local_mem_size) // LOCAL_MEMORY_SHARE
    )


def conv_plane_geometry(builder: PlanBuilder, conv: Node) -> PlaneGeometry | None:
    """The plane geometry of a 2-D depthwise Conv (one input and one output channel per
    group, constant weights), else None."""
    name = conv.inputs[0]
    if conv.op != "Conv" or len(conv.inputs) < 2 or not builder.is_host(conv.inputs[1]):
        return None
    if name not in builder.tensors or len(builder.shape(name)) != 4:
        return None
    _, channels, height, width = builder.shape(name)
    weight_shape = np.shape(builder.host(conv.inputs[1]))
    groups = int(conv.attrs.get("group", 1))
    if len(weight_shape) != 4 or weight_shape[:2] != (channels, 1) or groups != channels:
        return None
    kernel = (int(weight_shape[2]), int(weight_shape[3]))
    try:
        window = window_geometry(conv, (height, width), kernel, conv.attrs, ceil_mode=False)
    except ModelError:
        return None
    return plane_geometry(
        (height, width),
        kernel,
        (window.output[0], window.output[1]),
        (window.strides[0], window.strides[1]),
        (window.pads_begin[0], window.pads_begin[1]),
        (window.dilations[0], window.dilations[1]),
    )


def defers(builder: PlanBuilder, node: Node) -> bool:
    """For an INPUT_ACTIVATIONS node on a float tensor: whether its only reader is a
    depthwise Conv that will run as ``depthwise_plane``, which then applies the activation
    itself. The node's output is recorded as its input, not yet activated
    (``PlanBuilder.deferred_activations``), and no launch is queued."""
    if node.op not in INPUT_ACTIVATIONS or not node.outputs or not node.outputs[0]:
        return False
    name, output = node.inputs[0], node.outputs[0]
    if name not in builder.tensors or builder.tensors[name].dtype != np.float32:
        return False
    consumer = builder.sole_consumer(output)
    if consumer is None or consumer.inputs[0] != output:
        return False
    x = builder.tensors[name]
    builder.alias(output, x, x.shape)
    geometry = conv_plane_geometry(builder, consumer)
    if geometry is None or not fits_local_memory(builder, geometry):
        del builder.tensors[output]
        return False
    builder.deferred_activations[output] = (
        FLOAT32_EXPRESSIONS[node.op],
        *unary_parameters(node.op, node.attrs),
    )
    return True


def takes_padded_path(
    builder: PlanBuilder,
    epilogue: fusion.Epilogue,
    batch: int,
    channels: int,
    output_size: tuple[int, int],
    kernel: tuple[int, int],
    stride_w: int,
    geometry: PlaneGeometry | None = None,
) -> bool:
    """Whether a depthwise layer of this shape runs here rather than as the direct
    convolution: its padded plane fits local memory (one launch, no padding copy), or it is
    large enough, or followed by an activation it computes (the launch it saves pays for
    the padding's)."""
    if geometry is not None and fits_local_memory(builder, geometry):
        return True
    macs = batch * channels * output_size[0] * output_size[1] * kernel[0] * kernel[1]
    has_tail = not epilogue.activation and _tail(builder, epilogue.output) is not None
    return stride_w in (1, 2) and (macs >= PADDED_MIN_MACS or has_tail)


def lower_depthwise(
    builder: PlanBuilder,
    node: Node,
    x: DeviceTensor,
    x_shape: tuple[int, int, int, int],
    kernel: tuple[int, int],
    output_size: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int],
    dilations: tuple[int, int],
    weights: KernelArg,
    bias: KernelArg,
    epilogue: fusion.Epilogue,
    output_shape: tuple[int, ...],
) -> None:
    """Queue the depthwise layer (horizontal stride 1 or 2): one ``depthwise_plane`` launch
    when the padded plane fits local memory, else the padding copy and ``conv_depthwise``;
    either also computes a following SiLU, HardSwish or HardSigmoid (:func:`_tail`)."""
    batch, channels, height, width = x_shape
    geometry = plane_geometry((height, width), kernel, output_size, strides, pads, dilations)
    if fits_local_memory(builder, geometry):
        _lower_plane(builder, node, x, x_shape, geometry, weights, bias, epilogue, output_shape)
        return
    kernel_h, kernel_w = kernel
    out_h, out_w = output_size
    stride_h, stride_w = strides
    dilation_h, dilation_w = dilations
    plane_h, plane_w = geometry.plane
    padded = queue_padded_copy(
        builder,
        node,
        x,
        batch * channels,
        (height, width),
        (plane_h, plane_w),
        pads,
        f"{node.name} padded input",
    )
    defines = epilogue.act_define() + "".join(
        f"#define {name} {value}\n"
        for name, value in (
            ("DW_KH", kernel_h),
            ("DW_KW", kernel_w),
            ("DW_SW", stride_w),
            ("DW_DW", dilation_w),
        )
    )
    residual, output_name, alpha, beta, epilogue_defines = _epilogue(builder, epilogue)
    defines += epilogue_defines
    output = builder.new_tensor(output_name, output_shape)
    rows = batch * channels * out_h
    builder.launch(
        node,
        VECTOR_SOURCE + defines + DEPTHWISE_SOURCE,
        "conv_depthwise",
        [
            padded,
            weights,
            bias,
            residual,
            output.storage,
            *(
                i32(v)
                for v in (channels, plane_h, plane_w, out_h, out_w, stride_h, dilation_h, rows)
            ),
            f32(alpha),
            f32(beta),
        ],
        total=rows,
        local=(8,),
    )


def _lower_plane(
    builder: PlanBuilder,
    node: Node,
    x: DeviceTensor,
    x_shape: tuple[int, int, int, int],
    geometry: PlaneGeometry,
    weights: KernelArg,
    bias: KernelArg,
    epilogue: fusion.Epilogue,
    output_shape: tuple[int, ...],
) -> None:
    """One ``depthwise_plane`` launch: the producer's deferred activation (:func:`defers`)
    on the way in, the tail activation on the way out, and a global average pool of the
    result when one reads it (:func:`_pool_reader`)."""
    batch, channels, height, width = x_shape
    planes = batch * channels
    work_items = _work_items(builder)
    planes_per_group = _planes_per_group(builder, planes, geometry.output)
    groups = -(-planes // planes_per_group)
    deferred = builder.deferred_activations.get(node.inputs[0])
    alpha_in, beta_in = 0.0, 0.0
    defines = epilogue.act_define()
    if deferred is not None:
        expression, alpha_in, beta_in = deferred
        defines += f"#define DW_IN(x) ({expression})\n"
    values = {
        "DW_H": height,
        "DW_W": width,
        "DW_PH": geometry.plane[0],
        "DW_PW": geometry.plane[1],
        "DW_PT": geometry.pads[0],
        "DW_PL": geometry.pads[1],
        "DW_OH": geometry.output[0],
        "DW_OW": geometry.output[1],
        "DW_KH": geometry.kernel[0],
        "DW_KW": geometry.kernel[1],
        "DW_SH": geometry.strides[0],
        "DW_SW": geometry.strides[1],
        "DW_DH": geometry.dilations[0],
        "DW_DW": geometry.dilations[1],
        "DW_GROUP": work_items,
        "DW_PLANES": planes_per_group,
    }
    defines += "".join(f"#define {name} {value}\n" for name, value in values.items())
    elements = batch * channels * height * width
    if width < BLOCK and builder.reserve_reads(x, (elements + BLOCK) * FLOAT_BYTES):
        defines += "#define DW_READ_PAST 1\n"
    residual, output_name, alpha, beta, epilogue_defines = _epilogue(builder, epilogue)
    defines += epilogue_defines
    output = builder.new_tensor(output_name, output_shape)
    pool = _pool_reader(builder, output_name, len(output_shape))
    pooled = None
    if pool is not None:
        builder.absorb(pool)
        defines += "#define HAS_POOL 1\n"
        pooled_shape = (batch, channels, 1, 1) if len(output_shape) == 4 else (batch, channels, 1)
        pooled = builder.new_tensor(pool.outputs[0], pooled_shape).storage
    builder.launch(
        node,
        VECTOR_SOURCE + defines + DEPTHWISE_PLANE_SOURCE,
        "depthwise_plane",
        [
            x.storage,
            weights,
            bias,
            residual,
            output.storage,
            pooled,
            i32(channels),
            i32(planes),
            f32(alpha_in),
            f32(beta_in),
            f32(alpha),
            f32(beta),
        ],
        grid=(groups * work_items,),
        local=(work_items,),
    )


def _work_items(builder: PlanBuilder) -> int:
    """Work-items per ``depthwise_plane`` group on the plan's device (``PLANE_GROUP``)."""
    return 1 if builder.device.type & cl.device_type.CPU else PLANE_GROUP


def _planes_per_group(builder: PlanBuilder, planes: int, output: tuple[int, int]) -> int:
    """Planes one ``depthwise_plane`` work-group computes: on a CPU enough for about
    ``GROUP_OUTPUTS`` outputs while at least ``GROUPS_PER_UNIT`` groups per compute unit
    remain; elsewhere one (the group's work-items share the plane's rows)."""
    if _work_items(builder) != 1:
        return 1
    spread = planes // (GROUPS_PER_UNIT * int(builder.device.max_compute_units))
    return max(1, min(-(-GROUP_OUTPUTS // (output[0] * output[1])), spread))


def _epilogue(
    builder: PlanBuilder, epilogue: fusion.Epilogue
) -> tuple[Storage | None, str, float, float, str]:
    """What both depthwise kernels do after the multiply-adds: (the residual's storage or
    None, the output's name, the tail activation's alpha and beta, the defines). A tail
    activation that alone reads the output (and no activation already fused) is absorbed:
    its output becomes the kernel's."""
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    defines = "#define HAS_RESIDUAL 1\n" if residual is not None else ""
    output_name = epilogue.output
    alpha, beta = 0.0, 0.0
    tail = None if epilogue.activation else _tail(builder, output_name)
    if tail is not None:
        consumer, expression, alpha, beta = tail
        builder.absorb(consumer)
        output_name = consumer.outputs[0]
        defines += f"#define DW_TAIL(x) ({expression})\n"
    return residual, output_name, alpha, beta, defines


def _pool_reader(builder: PlanBuilder, name: str, rank: int) -> Node | None:
    """A reader of ``name`` that averages each of its planes (GlobalAveragePool, or a
    ReduceMean over the spatial axes keeping them), if any."""
    for reader in builder.consumers.get(name, []):
        if reader.inputs[0] != name or not reader.outputs or not reader.outputs[0]:
            continue
        if reader.op == "GlobalAveragePool":
            return reader
        if reader.op != "ReduceMean" or int(reader.attrs.get("keepdims", 1)) != 1:
            continue
        if reader.opset >= 18:
            if len(reader.inputs) < 2 or not builder.is_host(reader.inputs[1]):
                continue
            axes = [int(a) for a in np.asarray(builder.host(reader.inputs[1])).reshape(-1)]
        else:
            axes = [int(a) for a in reader.attrs.get("axes", [])]
        if sorted(a % rank for a in axes) == list(range(2, rank)):
            return reader
    return None


def _tail(builder: PlanBuilder, name: str) -> tuple[Node, str, float, float] | None:
    """(node, expression in ``x``, alpha, beta) of a TAIL_ACTIVATIONS node that alone
    reads ``name``, else None."""
    consumer = builder.sole_reader(name, TAIL_ACTIVATIONS)
    if consumer is None:
        return None
    expression = FLOAT32_EXPRESSIONS[consumer.op]
    return consumer, expression, *unary_parameters(consumer.op, consumer.attrs)
