"""Output size and padding of a sliding window (Conv, MaxPool, AveragePool), per ONNX spec.

Explicit ``pads`` are ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``. ``auto_pad``
SAME_UPPER / SAME_LOWER give ``ceil(in / stride)`` outputs with the odd padding at the end /
beginning; VALID means no padding. With ``ceil_mode`` the output size rounds up, but a last
window that would start inside the end padding is dropped (the rule onnxruntime and PyTorch
follow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshgpu.errors import ModelError
from meshgpu.inference.opencl.graph import Node


@dataclass(frozen=True)
class WindowGeometry:
    output: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]


def window_geometry(
    node: Node,
    spatial: Sequence[int],
    kernel: Sequence[int],
    attrs: Mapping[str, Any],
    *,
    ceil_mode: bool,
) -> WindowGeometry:
    rank = len(spatial)
    strides = tuple(int(s) for s in attrs.get("strides", [1] * rank))
    dilations = tuple(int(d) for d in attrs.get("dilations", [1] * rank))
    auto_pad = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if len(strides) != rank or len(dilations) != rank:
        raise ModelError(f"{node.describe()}: strides/dilations do not match {rank} dims")
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    begin: list[int] = []
    end: list[int] = []
    output: list[int] = []
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for size, stride, extent in zip(spatial, strides, extents, strict=True):
            out = -(-size // stride)
            total = max((out - 1) * stride + extent - size, 0)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
            output.append(out)
    else:
        if auto_pad == "VALID":
            pads = [0] * (2 * rank)
        elif auto_pad == "NOTSET":
            pads = [int(p) for p in attrs.get("pads", [0] * (2 * rank))]
        else:
            raise ModelError(f"{node.describe()}: unknown auto_pad {auto_pad!r}")
        if len(pads) != 2 * rank:
            raise ModelError(f"{node.describe()}: pads {pads} do not match {rank} dims")
        begin, end = pads[:rank], pads[rank:]
        for axis in range(rank):
            span = spatial[axis] + begin[axis] + end[axis] - extents[axis]
            if ceil_mode:
                out = math.ceil(span / strides[axis]) + 1
                if (out - 1) * strides[axis] >= spatial[axis] + begin[axis]:
                    out -= 1
            else:
                out = span // strides[axis] + 1
            output.append(out)
    if any(o <= 0 for o in output):
        raise ModelError(
            f"{node.describe()}: window {tuple(kernel)} does not fit input {tuple(spatial)} "
            f"(output would be {tuple(output)})"
        )
    return WindowGeometry(tuple(output), tuple(begin), tuple(end), strides, dilations)
