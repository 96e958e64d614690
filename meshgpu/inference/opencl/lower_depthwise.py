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

from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.depthwise import DEPTHWISE_SOURCE
from meshgpu.inference.opencl.kernels.elementwise import UNARY_EXPRESSIONS, UNARY_PARAMETERS
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32
from meshgpu.inference.opencl.tensors import FLOAT_BYTES, DeviceTensor, KernelArg

#: Activations after a depthwise layer that its launch computes on whole vectors (their
#: expressions hold for float and float8 alike): EfficientNet's SiLU, MobileNetV3's
#: HardSwish. ``fusion.collect`` leaves these to a separate vectorised launch after a GEMM
#: (docs/opencl-engine.md); here the epilogue is vectorised too, so the launch is saved.
TAIL_ACTIVATIONS = ("Swish", "HardSwish", "HardSigmoid")

#: Output columns per vector block.
BLOCK = 8

#: Multiply-adds from which a depthwise layer takes the padded path (module doc).
PADDED_MIN_MACS = 1 << 20


def takes_padded_path(
    builder: PlanBuilder,
    epilogue: fusion.Epilogue,
    batch: int,
    channels: int,
    output_size: tuple[int, int],
    kernel: tuple[int, int],
    stride_w: int,
) -> bool:
    """Whether a depthwise layer of this shape runs on padded planes: large enough, or
    followed by an activation it computes (the launch it saves pays for the padding's)."""
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
    """Queue the padding copy and the depthwise launch (horizontal stride 1 or 2); the
    launch also computes a following SiLU, HardSwish or HardSigmoid (:func:`_tail`)."""
    batch, channels, height, width = x_shape
    kernel_h, kernel_w = kernel
    out_h, out_w = output_size
    stride_h, stride_w = strides
    dilation_h, dilation_w = dilations
    pad_top, pad_left = pads
    last_block = (-(-out_w // BLOCK) - 1) * BLOCK
    plane_w = last_block * stride_w + (kernel_w - 1) * dilation_w + BLOCK * stride_w
    plane_h = (out_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1
    padded = builder.workspace(
        batch * channels * plane_h * plane_w * FLOAT_BYTES, f"{node.name} padded input"
    )
    padded_rows = batch * channels * plane_h
    builder.launch(
        node,
        CORE_SOURCE,
        "pad_planes",
        [
            x.storage,
            padded,
            *(i32(v) for v in (height, width, plane_h, plane_w, pad_top, pad_left, padded_rows)),
        ],
        total=padded_rows,
        local=(8,),
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
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    if residual is not None:
        defines += "#define HAS_RESIDUAL 1\n"
    output_name = epilogue.output
    alpha, beta = 0.0, 0.0
    tail = None if epilogue.activation else _tail(builder, output_name)
    if tail is not None:
        consumer, expression, alpha, beta = tail
        builder.absorb(consumer)
        output_name = consumer.outputs[0]
        defines += f"#define DW_TAIL(x) ({expression})\n"
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


def _tail(builder: PlanBuilder, name: str) -> tuple[Node, str, float, float] | None:
    """(node, expression in ``x``, alpha, beta) of a TAIL_ACTIVATIONS node that alone
    reads ``name``, else None."""
    consumer = builder.sole_consumer(name)
    if (
        consumer is None
        or consumer.op not in TAIL_ACTIVATIONS
        or consumer.inputs[0] != name
        or not consumer.outputs
        or not consumer.outputs[0]
    ):
        return None
    (alpha_name, alpha_default), (beta_name, beta_default) = UNARY_PARAMETERS.get(
        consumer.op, (("", 0.0), ("", 0.0))
    )
    alpha = float(consumer.attrs.get(alpha_name, alpha_default))
    beta = float(consumer.attrs.get(beta_name, beta_default))
    return consumer, UNARY_EXPRESSIONS[consumer.op], alpha, beta
