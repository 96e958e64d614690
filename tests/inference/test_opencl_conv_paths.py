"""Each way the engine lowers a convolution, pinned: Winograd F(2x2, 3x3) for wide stride-1
3x3 layers, the implicit GEMM over wide rows (``conv_gemm6``), over padded rows for stride 2
(``conv_gemm_s2``), with and without the zero-padded input copy, im2col where dropped
columns would cost more, depthwise layers on planes padded in local memory
(``depthwise_plane``) or in a copy (``conv_depthwise``), and the cases that must fall back.
Every case checks the kernels the plan chose *and* the numbers against ``onnx.reference``,
so a change to the layout rule cannot silently drop a path's coverage."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from meshgpu.inference.opencl import OpenCLSession, lower_depthwise
from meshgpu.inference.opencl.lower_conv_implicit import ConvShape, choose_layout
from tests.inference.opencl_cases import assert_close, make_model, randn, reference

pytest.importorskip("pyopencl")


@pytest.fixture(scope="module")
def session() -> Callable[[onnx.ModelProto], OpenCLSession]:
    from meshgpu.inference.opencl.programs import default_device

    device = default_device()
    return lambda model: OpenCLSession(model, device=device)


def _kernels(opencl: OpenCLSession) -> list[str]:
    (plan,) = opencl._plans.values()
    return [launch.kernel_name for launch in plan.launches]


def _run_conv(session, batch, channels, size, out_channels, kernel, attrs, *, residual=False):
    height, width = size
    group = attrs.get("group", 1)
    inputs = {"x": randn(batch, channels, height, width, seed=1)}
    initializers = {
        "w": randn(out_channels, channels // group, *kernel, seed=2),
        "b": randn(out_channels, seed=3),
    }
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=list(kernel), **attrs)]
    if residual:
        probe = make_model(nodes, inputs, ["c"], initializers=initializers)
        shape = reference(probe, inputs)[0].shape
        inputs["shortcut"] = randn(*shape, seed=4)
        nodes += [
            helper.make_node("Add", ["c", "shortcut"], ["s"]),
            helper.make_node("Relu", ["s"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.1))
    model = make_model(nodes, inputs, ["y"], initializers=initializers)
    opencl = session(model)
    assert_close(opencl.run(inputs)["y"], reference(model, inputs)[0], "y")
    return _kernels(opencl)


_DEPTHWISE = ["depthwise_plane"]
_PADDED_COPY = ["pad_planes", "conv_depthwise"]
_WINOGRAD = ["pad_planes", "winograd_input", "conv_gemm6", "winograd_output"]

PATH_CASES = [
    # (batch, C, (H, W), M, kernel, attrs, residual, kernels the plan must use)
    (1, 5, (9, 11), 13, (3, 3), {"pads": [1, 1, 1, 1]}, False, ["pad_planes", "conv_gemm6"]),
    (2, 8, (6, 19), 16, (3, 3), {"pads": [0, 2, 1, 0], "group": 2}, True, None),
    (3, 7, (5, 5), 33, (1, 1), {}, True, ["conv_gemm6"]),
    (2, 6, (12, 12), 9, (3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, False, None),
    (2, 4, (15, 17), 12, (3, 3), {"strides": [2, 2], "group": 2}, False, ["conv_gemm_s2"]),
    (1, 3, (23, 21), 8, (7, 7), {"strides": [2, 2], "pads": [3, 3, 2, 1]}, True, None),
    (2, 16, (14, 14), 24, (1, 1), {"strides": [2, 2]}, False, ["conv_gemm_s2"]),
    # Pointwise with channels along the vector (conv_pointwise): more input than output
    # channels on a map whose pixel count is no multiple of 16 (a last 16-channel block of
    # 8 rows or fewer, pixel tiles across images, a last tile partly past the batch), or
    # expanding on a 7x7 map; 8x8 maps and shallow inputs stay on conv_gemm6.
    (1, 72, (7, 7), 40, (1, 1), {}, True, ["conv_pointwise"]),
    (3, 64, (5, 3), 20, (1, 1), {}, False, ["conv_pointwise"]),
    (2, 64, (7, 7), 100, (1, 1), {}, True, ["conv_pointwise"]),
    (1, 80, (14, 14), 160, (1, 1), {}, False, ["conv_gemm6"]),
    (1, 64, (8, 8), 16, (1, 1), {}, False, ["conv_gemm6"]),
    # Winograd F(2x2, 3x3): stride-1 3x3 layers of 128 channels or more; rows of whole and
    # partial 8-tile groups, odd output sizes, asymmetric pads, two images, a residual.
    (1, 128, (5, 20), 128, (3, 3), {"pads": [1, 1, 1, 1]}, True, _WINOGRAD),
    (2, 128, (7, 9), 136, (3, 3), {"pads": [0, 2, 1, 0]}, False, _WINOGRAD),
    (1, 128, (9, 9), 128, (3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, False, None),
    # 1200 output channels on a 7x7 map: two dropped columns per row cost more than im2col.
    (1, 8, (7, 7), 1200, (3, 3), {"pads": [1, 1, 1, 1]}, False, ["im2col_panels", "gemm_8x8"]),
    # Vertical stride 2 with horizontal stride 1: neither layout gives contiguous taps.
    (1, 4, (9, 9), 8, (3, 3), {"strides": [2, 1]}, False, ["im2col_panels", "gemm_8x8"]),
    # Depthwise: padded planes in local memory, then one vector load per tap whatever the row width,
    # stride, dilation or padding (EfficientNet's 7-pixel rows, LR-ASPP's dilated 5x5).
    (2, 6, (7, 7), 6, (5, 5), {"group": 6, "pads": [2, 2, 2, 2]}, True, _DEPTHWISE),
    (
        1,
        5,
        (14, 13),
        5,
        (5, 5),
        {"group": 5, "pads": [4, 4, 4, 4], "dilations": [2, 2]},
        False,
        _DEPTHWISE,
    ),
    (
        2,
        4,
        (17, 19),
        4,
        (3, 3),
        {"group": 4, "pads": [1, 0, 2, 1], "strides": [2, 2]},
        False,
        _DEPTHWISE,
    ),
    (1, 3, (9, 23), 3, (7, 7), {"group": 3, "pads": [3, 3, 3, 3]}, True, _DEPTHWISE),
    (
        1,
        3,
        (6, 10),
        3,
        (3, 3),
        {"group": 3, "strides": [3, 2], "dilations": [1, 3]},
        False,
        _DEPTHWISE,
    ),
    # Horizontal stride 3 cannot take the vector loads: the bounds-checked direct kernel.
    (1, 3, (8, 10), 3, (3, 3), {"group": 3, "strides": [1, 3]}, False, ["conv2d_direct"]),
    # Two output channels per group: also the direct kernel.
    (1, 3, (8, 10), 6, (3, 3), {"group": 3, "pads": [1, 1, 1, 1]}, True, ["conv2d_direct"]),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: f"{c[:5]}-{c[5]}")
def test_convolution_path(session, case, monkeypatch) -> None:
    # every depthwise case here is far below the size that pays for the padding launch
    monkeypatch.setattr(lower_depthwise, "PADDED_MIN_MACS", 0)
    batch, channels, size, out_channels, kernel, attrs, residual, expected = case
    kernels = _run_conv(
        session, batch, channels, size, out_channels, kernel, attrs, residual=residual
    )
    if expected is not None:
        assert kernels == expected


def test_depthwise_planes_beyond_local_memory_take_a_padded_copy(session, monkeypatch) -> None:
    """Where a padded plane does not fit the device's local memory, the depthwise layer
    takes the padding copy and ``conv_depthwise``, or below PADDED_MIN_MACS (where that
    launch costs more than it saves) the bounds-checked direct kernel."""
    monkeypatch.setattr(lower_depthwise, "LOCAL_MEMORY_SHARE", 1 << 40)
    attrs = {"group": 8, "pads": [3, 3, 3, 3]}
    assert _run_conv(session, 1, 8, (2, 2), 8, (7, 7), attrs) == ["conv2d_direct"]
    big = (1 << 20) // (8 * 49) + 1  # rows of a 1-pixel-wide map: just past the threshold
    kernels = _run_conv(session, 1, 8, (big, 1), 8, (7, 7), attrs)
    assert kernels == _PADDED_COPY
    attrs = {"group": 5, "pads": [4, 4, 4, 4], "dilations": [2, 2]}
    monkeypatch.setattr(lower_depthwise, "PADDED_MIN_MACS", 0)
    assert _run_conv(session, 2, 5, (14, 13), 5, (5, 5), attrs, residual=True) == _PADDED_COPY


@pytest.mark.parametrize("planes", ["local", "copied"])
@pytest.mark.parametrize("activation", ["silu", "HardSwish", "HardSigmoid"])
def test_depthwise_layer_computes_the_activation_after_it(
    session, activation, planes, monkeypatch
) -> None:
    """EfficientNet's depthwise, BatchNorm, SiLU (x * Sigmoid(x)) and MobileNetV3's
    HardSwish run in the depthwise launch; with planes too large for local memory, as the
    padding copy and one depthwise launch, even below the size that pays for the padding
    on its own (the activation's launch is saved instead)."""
    if planes == "copied":
        monkeypatch.setattr(lower_depthwise, "LOCAL_MEMORY_SHARE", 1 << 40)
    x = randn(2, 6, 7, 7, seed=5)
    initializers = {
        "w": randn(6, 1, 3, 3, seed=6),
        "gamma": randn(6, seed=7),
        "beta": randn(6, seed=8),
        "mean": randn(6, seed=9),
        "var": np.abs(randn(6, seed=10)) + 0.5,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=6, pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"]),
    ]
    if activation == "silu":
        nodes += [
            helper.make_node("Sigmoid", ["n"], ["s"]),
            helper.make_node("Mul", ["n", "s"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node(activation, ["n"], ["y"]))
    model = make_model(nodes, {"x": x}, ["y"], initializers=initializers)
    opencl = session(model)
    assert_close(opencl.run({"x": x})["y"], reference(model, {"x": x})[0], "y")
    assert _kernels(opencl) == (_DEPTHWISE if planes == "local" else _PADDED_COPY)


@pytest.mark.parametrize(
    ("activation", "pool", "size", "grouping"),
    [
        ("HardSwish", "ReduceMean", (14, 14), None),
        ("silu", "GlobalAveragePool", (7, 7), None),
        ("Relu", "ReduceMean", (9, 5), None),
        # several planes per work-group (the last group short), one work-item or eight
        ("silu", "GlobalAveragePool", (7, 7), (1, 5)),
        ("HardSwish", "ReduceMean", (9, 5), (8, 5)),
    ],
)
def test_depthwise_launch_applies_the_activation_before_and_pools_after(
    session, activation, pool, size, grouping, monkeypatch
) -> None:
    """The inverted bottleneck of MobileNetV3 and EfficientNet: expanding 1x1 convolution,
    its activation, the depthwise layer, and a squeeze-excitation's global average pool of
    the result. The activation in front runs while the depthwise launch copies its input
    plane, and the pool as that launch finishes the plane: two launches where the graph
    has five nodes (rows narrower than a vector included)."""
    if grouping is not None:
        work_items, planes_per_group = grouping
        monkeypatch.setattr(lower_depthwise, "_work_items", lambda builder: work_items)
        monkeypatch.setattr(lower_depthwise, "_planes_per_group", lambda *args: planes_per_group)
    x = randn(2, 4, *size, seed=11)
    initializers = {
        "we": randn(12, 4, 1, 1, seed=12),
        "wd": randn(12, 1, 5, 5, seed=13),
        "bd": randn(12, seed=14),
        "axes": np.array([2, 3], np.int64),
    }
    nodes = [helper.make_node("Conv", ["x", "we"], ["e"])]
    if activation == "silu":
        nodes += [
            helper.make_node("Sigmoid", ["e"], ["s"]),
            helper.make_node("Mul", ["e", "s"], ["a"]),
        ]
    else:
        nodes.append(helper.make_node(activation, ["e"], ["a"]))
    nodes += [
        helper.make_node("Conv", ["a", "wd", "bd"], ["d"], group=12, pads=[2, 2, 2, 2]),
        helper.make_node("HardSwish", ["d"], ["h"]),
        helper.make_node(pool, ["h", "axes"] if pool == "ReduceMean" else ["h"], ["p"]),
        helper.make_node("Mul", ["h", "p"], ["y"]),
    ]
    model = make_model(nodes, {"x": x}, ["y", "p"], initializers=initializers, opset=18)
    opencl = session(model)
    found = opencl.run({"x": x})
    expected = reference(model, {"x": x})
    assert_close(found["y"], expected[0], "y")
    assert_close(found["p"], expected[1], "p")
    assert _kernels(opencl)[1:] == ["depthwise_plane", "channel_scale"]
    if grouping is not None:
        (plan,) = opencl._plans.values()
        # 24 planes, 5 to a group
        assert plan.launches[1].global_size == (5 * work_items,)


def test_activation_read_elsewhere_is_not_deferred(session) -> None:
    """An activation whose output another node also reads runs as its own launch."""
    x = randn(1, 3, 10, 10, seed=15)
    initializers = {"wd": randn(3, 1, 3, 3, seed=16)}
    nodes = [
        helper.make_node("HardSwish", ["x"], ["a"]),
        helper.make_node("Conv", ["a", "wd"], ["d"], group=3, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["d", "a"], ["y"]),
    ]
    model = make_model(nodes, {"x": x}, ["y"], initializers=initializers)
    opencl = session(model)
    assert_close(opencl.run({"x": x})["y"], reference(model, {"x": x})[0], "y")
    assert _kernels(opencl) == ["unary8", "depthwise_plane"]


def test_fire_module_concat_reads_in_place(session) -> None:
    """SqueezeNet's fire module: the squeeze output is read in place by both expands, which
    write their slices of the concatenation; nothing is copied or packed at run time."""
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["s"]),
        helper.make_node("Relu", ["s"], ["sr"]),
        helper.make_node("Conv", ["sr", "w1"], ["e1"]),
        helper.make_node("Relu", ["e1"], ["e1r"]),
        helper.make_node("Conv", ["sr", "w3"], ["e3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["e3"], ["e3r"]),
        helper.make_node("Concat", ["e1r", "e3r"], ["y"], axis=1),
    ]
    initializers = {
        "ws": randn(6, 12, 1, 1, seed=1),
        "w1": randn(16, 6, 1, 1, seed=2),
        "w3": randn(16, 6, 3, 3, seed=3),
    }
    inputs = {"x": randn(2, 12, 13, 13, seed=4)}
    model = make_model(nodes, inputs, ["y"], initializers=initializers)
    opencl = session(model)
    assert_close(opencl.run(inputs)["y"], reference(model, inputs)[0], "y")
    assert _kernels(opencl) == ["conv_gemm6", "conv_gemm6", "pad_planes", "conv_gemm6"]


def test_pointwise_convolutions_write_their_concat_slices(session) -> None:
    """Two pointwise convolutions on one 7x7 map, concatenated along channels: each
    ``conv_pointwise`` writes its slice of the Concat's output in place."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["x", "w2", "b2"], ["b"]),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("Concat", ["a", "br"], ["y"], axis=1),
    ]
    initializers = {
        "w1": randn(24, 96, 1, 1, seed=5),
        "w2": randn(40, 96, 1, 1, seed=6),
        "b2": randn(40, seed=7),
    }
    inputs = {"x": randn(2, 96, 7, 7, seed=8)}
    model = make_model(nodes, inputs, ["y"], initializers=initializers)
    opencl = session(model)
    assert_close(opencl.run(inputs)["y"], reference(model, inputs)[0], "y")
    assert _kernels(opencl) == ["conv_pointwise", "conv_pointwise"]


def test_layout_rule() -> None:
    """Wide rows for stride 1 (no dropped columns when unpadded), padded rows for stride 2,
    None where the dropped columns outweigh im2col or the stride does not vectorise."""

    def conv(m, size, k, stride, pad):
        out = (size + 2 * pad - k) // stride + 1
        return ConvShape(1, 8, size, size, m, 1, out, out, k, k, stride, stride, pad, pad, 1, 1)

    pointwise = choose_layout(conv(1000, 13, 1, 1, 0))
    assert pointwise is not None and not pointwise.copy_input
    assert pointwise.columns == 13 * 13
    padded = choose_layout(conv(64, 55, 3, 1, 1))
    assert padded is not None and padded.copy_input and padded.row_pitch == 57
    strided = choose_layout(conv(64, 224, 3, 2, 0))
    assert strided is not None and strided.row_pitch == 112
    assert choose_layout(conv(1024, 7, 3, 1, 1)) is None
    assert choose_layout(conv(64, 13, 3, 3, 1)) is None
