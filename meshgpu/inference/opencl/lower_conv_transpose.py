"""Lowering of ConvTranspose (1-D and 2-D): groups, strides, pads, ``output_padding``,
``output_shape``, dilations and ``auto_pad``, per the ONNX operator spec."""

from __future__ import annotations

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.transposed_conv import TRANSPOSED_CONV_SOURCE
from meshgpu.inference.opencl.lower_tensor import _count
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import i32, lowers
from meshgpu.inference.opencl.tensors import KernelArg


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
    if len(x.shape) not in (3, 4) or len(w_shape) != len(x.shape):
        raise UnsupportedOperatorError(
            f"{node.describe()}: only 1-D and 2-D transposed convolutions (input {x.shape})"
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
    if len(spatial) == 1:  # 1-D as a 2-D of height 1
        spatial, kernel, out = [1, *spatial], [1, *kernel], [1, *out]
        strides, begin, dilations = [1, *strides], [0, *begin], [1, *dilations]
    weights = builder.tensor(node, node.inputs[1])
    bias: KernelArg = None
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = builder.tensor(node, node.inputs[2]).storage
    out_shape = (batch, out_channels, *(out if len(x.shape) == 4 else out[1:]))
    output = builder.new_tensor(node.outputs[0], out_shape)
    total = _count(out_shape)
    builder.launch(
        node,
        TRANSPOSED_CONV_SOURCE,
        "conv_transpose2d",
        [
            x.storage,
            weights.storage,
            bias,
            output.storage,
            *(
                i32(v)
                for v in (
                    in_channels,
                    spatial[0],
                    spatial[1],
                    out_channels,
                    out[0],
                    out[1],
                    kernel[0],
                    kernel[1],
                    strides[0],
                    strides[1],
                    begin[0],
                    begin[1],
                    dilations[0],
                    dilations[1],
                    groups,
                    total,
                )
            ),
        ],
        total=total,
    )
