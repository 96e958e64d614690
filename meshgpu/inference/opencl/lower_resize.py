"""Lowering of Resize and Upsample: one resampling pass per axis whose size or coordinates
change, each through a tap table.

Resize is separable: along each axis, output element ``j`` is a fixed weighted sum of a few
input elements, whatever the mode (nearest, linear, cubic, with or without antialias,
``exclude_outside``) and coordinate transformation. The weights of one axis are exactly the
operator applied to the identity matrix, so the tables are computed that way, with
``onnx.reference`` evaluating a one-axis Resize of ``eye(n)`` once per plan: the spec's
arithmetic (coordinate modes, nearest rounding, cubic coefficients, edge handling) is then
the reference's by construction rather than re-derived here. The device kernel only sums
taps. Upsample (opset 7-9) and Resize-10 are the asymmetric transformation with ``floor``
nearest rounding, as onnxruntime runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.resample import RESAMPLE_SOURCE
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.lower_tensor import _count
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32, lowers
from meshgpu.inference.opencl.tensors import DeviceTensor

_PASSED_ATTRIBUTES = (
    "mode",
    "coordinate_transformation_mode",
    "cubic_coeff_a",
    "exclude_outside",
    "nearest_mode",
    "antialias",
)


def _host_floats(builder: PlanBuilder, node: Node, position: int) -> np.ndarray | None:
    if len(node.inputs) <= position or not node.inputs[position]:
        return None
    name = node.inputs[position]
    if not builder.is_host(name):
        raise UnsupportedOperatorError(f"{node.describe()}: input {name!r} must be constant")
    value = np.asarray(builder.host(name), dtype=np.float64).reshape(-1)
    return value if value.size else None


def _plan_axes(
    builder: PlanBuilder, node: Node, shape: tuple[int, ...]
) -> tuple[dict[str, Any], list[tuple[int, int, float, tuple[float, float]]]]:
    """(attributes of the one-axis Resize, [(axis, out length, scale, roi) per changed axis])."""
    rank = len(shape)
    attrs: dict[str, Any] = {k: node.attrs[k] for k in _PASSED_ATTRIBUTES if k in node.attrs}
    roi = None
    sizes = None
    if node.op == "Upsample" or node.opset < 11:
        scales = (
            _host_floats(builder, node, 1)
            if node.opset >= 9
            else np.asarray(node.attrs["scales"], np.float64)
        )
        mode = str(node.attrs.get("mode", "nearest"))
        if mode not in ("nearest", "linear", "bilinear"):
            raise UnsupportedOperatorError(f"{node.describe()}: mode {mode!r}")
        attrs = {
            "mode": "linear" if mode != "nearest" else "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        }
    else:
        roi = _host_floats(builder, node, 1)
        scales = _host_floats(builder, node, 2)
        sizes = _host_floats(builder, node, 3)
    axes = [int(a) % rank for a in node.attrs.get("axes", range(rank))]
    given = sizes if sizes is not None else scales
    if given is None:
        raise ModelError(f"{node.describe()}: neither scales nor sizes")
    if given.size != len(axes):
        raise ModelError(f"{node.describe()}: scales/sizes for {len(axes)} axes of {shape}")
    full_roi = [(0.0, 1.0)] * rank
    if roi is not None and attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        count = len(axes)
        for position, axis in enumerate(axes):
            full_roi[axis] = (float(roi[position]), float(roi[count + position]))
    plans = []
    policy = str(node.attrs.get("keep_aspect_ratio_policy", "stretch"))
    if sizes is not None:
        ratios = [sizes[p] / shape[a] for p, a in enumerate(axes)]
        if policy == "stretch":
            chosen = dict(zip(axes, ratios, strict=True))
            lengths = {a: int(sizes[p]) for p, a in enumerate(axes)}
        else:
            common = min(ratios) if policy == "not_larger" else max(ratios)
            chosen = dict.fromkeys(axes, common)
            lengths = {a: int(np.floor(shape[a] * common + 0.5)) for a in axes}
    else:
        assert scales is not None
        chosen = {a: float(scales[p]) for p, a in enumerate(axes)}
        lengths = {
            a: int(np.floor(shape[a] * (full_roi[a][1] - full_roi[a][0]) * chosen[a])) for a in axes
        }
    for axis in axes:
        scale, length = chosen[axis], lengths[axis]
        cropped = attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize"
        if length == shape[axis] and scale == 1.0 and not cropped:
            continue
        plans.append((axis, length, scale, full_roi[axis]))
    return attrs, plans


def _one_axis(
    attrs: dict[str, Any],
    in_length: int,
    out_length: int,
    scale: float,
    roi: tuple[float, float],
    opset: int,
    data: np.ndarray,
    extrapolation: float,
) -> np.ndarray:
    """The reference Resize of ``data`` [rows, in_length] along its last axis."""
    from onnx.reference import ReferenceEvaluator

    rows = data.shape[0]
    # the scale as a model holds it (float32): what the length from scales is computed from
    by_scales = np.floor(in_length * (roi[1] - roi[0]) * float(np.float32(scale)))
    use_sizes = int(by_scales) != out_length
    inputs = ["x", "roi", "" if use_sizes else "scales", "sizes" if use_sizes else ""]
    node = onnx.helper.make_node(
        "Resize", inputs, ["y"], extrapolation_value=extrapolation, **attrs
    )
    initializers = [
        onnx.numpy_helper.from_array(np.array([0, roi[0], 1, roi[1]], np.float32), "roi")
    ]
    if use_sizes:
        initializers.append(
            onnx.numpy_helper.from_array(np.array([rows, out_length], np.int64), "sizes")
        )
    else:
        initializers.append(
            onnx.numpy_helper.from_array(np.array([1.0, scale], np.float32), "scales")
        )
    graph = onnx.helper.make_graph(
        [node],
        "one_axis",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(data.shape))],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializers,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", max(opset, 11))]
    )
    (result,) = ReferenceEvaluator(model).run(None, {"x": data.astype(np.float32)})
    return np.asarray(result, dtype=np.float64)


def _tap_table(
    node: Node,
    attrs: dict[str, Any],
    in_length: int,
    out_length: int,
    scale: float,
    roi: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index [out, taps] int32, weight [out, taps] float32, outside [out] float32)."""
    weights = _one_axis(
        attrs, in_length, out_length, scale, roi, node.opset, np.eye(in_length), 0.0
    ).T  # [out, in]
    if weights.shape != (out_length, in_length):
        raise ModelError(f"{node.describe()}: resampled to {weights.shape[0]}, not {out_length}")
    outside = np.zeros(out_length, np.float32)
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        outside = (
            _one_axis(
                attrs,
                in_length,
                out_length,
                scale,
                roi,
                node.opset,
                np.zeros((1, in_length)),
                1.0,
            )
            .reshape(-1)
            .astype(np.float32)
        )
    taps = max(int((weights != 0).sum(axis=1).max()), 1)
    order = np.argsort(weights == 0, axis=1, kind="stable")[:, :taps]
    index = np.take_along_axis(np.broadcast_to(np.arange(in_length), weights.shape), order, 1)
    weight = np.take_along_axis(weights, order, 1)
    return index.astype(np.int32), weight.astype(np.float32), outside


def _constant(table: np.ndarray) -> Callable[[], np.ndarray]:
    """``table`` as the maker :meth:`PlanBuilder.weight` calls on its first upload."""
    return lambda: table


@lowers("Resize", "Upsample")
def lower_resize(builder: PlanBuilder, node: Node) -> None:
    x = builder.tensor(node, node.inputs[0])
    attrs, plans = _plan_axes(builder, node, x.shape)
    extrapolation = float(node.attrs.get("extrapolation_value", 0.0))
    current: DeviceTensor = x
    shape = list(x.shape)
    if not plans:
        builder.alias(node.outputs[0], x, x.shape)
        return
    # the last axis first: the passes after it then run on rows of eight or more contiguous
    # elements (resample_axis8), and the largest pass, the last, is one of those
    plans = sorted(plans, key=lambda plan: -plan[0])
    for position, (axis, length, scale, roi) in enumerate(plans):
        in_length = shape[axis]
        index, weight, outside = _tap_table(node, attrs, in_length, length, scale, roi)
        key = ("resize", node.name, axis, in_length, length, scale, roi)
        index_buffer = builder.weight((*key, "index"), _constant(index))
        weight_buffer = builder.weight((*key, "weight"), _constant(weight))
        outside_buffer = builder.weight((*key, "outside"), _constant(outside))
        shape[axis] = length
        last = position == len(plans) - 1
        name = node.outputs[0] if last else f"{node.name}/axis{axis}"
        output = builder.new_tensor(name, shape)
        total = _count(shape)
        inner = _count(shape[axis + 1 :])
        vector = inner % 8 == 0
        builder.launch(
            node,
            VECTOR_SOURCE + RESAMPLE_SOURCE,
            "resample_axis8" if vector else "resample_axis",
            [
                current.storage,
                output.storage,
                index_buffer,
                weight_buffer,
                outside_buffer,
                f32(extrapolation),
                i32(in_length),
                i32(length),
                i32(_count(shape[axis + 1 :])),
                i32(index.shape[1]),
                i32(total),
            ],
            total=total // 8 if vector else total,
        )
        current = output
