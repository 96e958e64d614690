"""Each OpenCL kernel against onnx.reference: attributes, broadcasting, opset differences,
and shapes that stress the kernels (odd sizes, batch > 1, groups, dilations, asymmetric
pads, ceil_mode)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from meshgpu.inference.opencl import OpenCLSession
from tests.inference.opencl_cases import check_against_reference, randn

pytest.importorskip("pyopencl")


@pytest.fixture(scope="module")
def session() -> Callable[[onnx.ModelProto], OpenCLSession]:
    """One OpenCL device for the module; sessions share its context and program cache."""
    from meshgpu.inference.opencl.programs import default_device

    device = default_device()
    return lambda model: OpenCLSession(model, device=device)


CONV_CASES = [
    # (batch, C, H, W, M, kernel, attrs, bias)
    (1, 3, 9, 11, 8, (3, 3), {"pads": [1, 1, 1, 1]}, True),
    (2, 5, 13, 7, 13, (3, 2), {"strides": [2, 1], "pads": [0, 1, 2, 0]}, True),
    (1, 6, 12, 12, 9, (3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, False),
    (2, 8, 10, 10, 12, (1, 1), {"group": 4}, True),
    (1, 16, 9, 9, 16, (3, 3), {"group": 16, "pads": [1, 1, 1, 1], "strides": [2, 2]}, True),
    (1, 4, 7, 9, 8, (3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
    (1, 4, 8, 8, 8, (2, 2), {"auto_pad": "SAME_LOWER"}, False),
    (1, 3, 11, 11, 17, (5, 5), {"auto_pad": "VALID", "strides": [3, 3]}, True),
    (3, 7, 5, 5, 33, (1, 1), {}, True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[:5]}-{c[6]}")
def test_conv(session, case) -> None:
    batch, channels, height, width, out_channels, kernel, attrs, with_bias = case
    group = attrs.get("group", 1)
    inputs = {"x": randn(batch, channels, height, width, seed=1)}
    initializers = {"w": randn(out_channels, channels // group, *kernel, seed=2)}
    names = ["x", "w"]
    if with_bias:
        initializers["b"] = randn(out_channels, seed=3)
        names.append("b")
    node = helper.make_node("Conv", names, ["y"], kernel_shape=list(kernel), **attrs)
    check_against_reference(session, [node], inputs, ["y"], initializers=initializers)


def test_conv_1d(session) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 2], strides=[2])
    check_against_reference(
        session, [node], {"x": randn(2, 3, 17)}, ["y"], initializers={"w": randn(8, 3, 4)}
    )


def test_conv_batchnorm_relu_residual_fusion(session) -> None:
    """Conv -> BN -> Mul/Add by per-channel constants -> Add(shortcut) -> Relu in one kernel."""
    channels = 12
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
        helper.make_node("Mul", ["n", "k"], ["n2"]),
        helper.make_node("Add", ["n2", "shortcut"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["y"]),
    ]
    initializers = {
        "w": randn(channels, channels, 3, 3, seed=4),
        "s": randn(channels, seed=5),
        "bb": randn(channels, seed=6),
        "m": randn(channels, seed=7),
        "v": np.abs(randn(channels, seed=8)) + 0.5,
        "k": randn(channels, 1, 1, seed=9),
    }
    inputs = {"x": randn(2, channels, 6, 5, seed=10), "shortcut": randn(2, channels, 6, 5)}
    check_against_reference(session, nodes, inputs, ["y"], initializers=initializers)


def test_standalone_batchnorm_mul_add_relu(session) -> None:
    """DenseNet's pattern: BN on a concatenation, then per-channel Mul, Add and Relu."""
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", "s", "bb", "m", "v"], ["n"], epsilon=1e-3),
        helper.make_node("Unsqueeze", ["w1", "axes"], ["w1u"]),
        helper.make_node("Mul", ["n", "w1u"], ["n2"]),
        helper.make_node("Add", ["n2", "b1"], ["n3"]),
        helper.make_node("Relu", ["n3"], ["y"]),
    ]
    initializers = {
        "s": randn(7, seed=1),
        "bb": randn(7, seed=2),
        "m": randn(7, seed=3),
        "v": np.abs(randn(7, seed=4)) + 0.1,
        "w1": randn(7, seed=5),
        "b1": randn(7, 1, 1, seed=6),
        "axes": np.array([1, 2], np.int64),
    }
    inputs = {"a": randn(1, 3, 5, 5, seed=7), "b": randn(1, 4, 5, 5, seed=8)}
    # onnx.reference's BatchNormalization before opset 14 disagrees with the spec and with
    # onnxruntime (checked by hand); opset 15 exercises the same inference formula.
    check_against_reference(session, nodes, inputs, ["y"], initializers=initializers, opset=15)


def test_inception_concat_of_convolutions(session) -> None:
    """Convolutions feeding a Concat write straight into their slices; an odd one copies."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["x", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]
        ),
        helper.make_node("Concat", ["r1", "c3", "p"], ["y"], axis=1),
    ]
    initializers = {"w1": randn(9, 4, 1, 1, seed=1), "w3": randn(10, 4, 3, 3, seed=2)}
    check_against_reference(
        session, nodes, {"x": randn(2, 4, 7, 6, seed=3)}, ["y"], initializers=initializers
    )


GEMM_CASES = [
    ({}, (3, 5), (5, 4), (4,)),
    ({"transA": 1}, (5, 3), (5, 4), (1, 4)),
    ({"transB": 1, "alpha": 0.5, "beta": 2.0}, (9, 17), (11, 17), (9, 1)),
    ({"transA": 1, "transB": 1}, (6, 10), (13, 6), (10, 13)),
    ({"beta": 0.0}, (2, 3), (3, 2), ()),
    # At most 8 activation rows with constant weights: gemm_rows reads A in place.
    ({"transA": 1, "transB": 1, "alpha": 0.5}, (6, 7), (13, 6), (7, 1)),
    ({"transB": 1, "beta": 2.0}, (8, 17), (11, 17), (8, 11)),
    ({}, (1, 64), (64, 10), (10,)),
]


@pytest.mark.parametrize("attrs, a_shape, b_shape, c_shape", GEMM_CASES)
def test_gemm(session, attrs, a_shape, b_shape, c_shape) -> None:
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], **attrs)
    check_against_reference(
        session,
        [node],
        {"a": randn(*a_shape, seed=1)},
        ["y"],
        initializers={"b": randn(*b_shape, seed=2), "c": randn(*c_shape, seed=3)},
    )


def test_gemm_with_runtime_weights_and_relu(session) -> None:
    nodes = [
        helper.make_node("Gemm", ["a", "b"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    inputs = {"a": randn(10, 7, seed=1), "b": randn(12, 7, seed=2)}
    check_against_reference(session, nodes, inputs, ["y"])


def test_small_batch_gemm_reads_rows_in_place_with_fused_relu(session) -> None:
    nodes = [
        helper.make_node("Gemm", ["a", "w", "c"], ["g"]),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    initializers = {"w": randn(19, 13, seed=2), "c": randn(13, seed=3)}
    check_against_reference(
        session, nodes, {"a": randn(3, 19, seed=1)}, ["y"], initializers=initializers
    )


@pytest.mark.parametrize("rows", [2, 12])
@pytest.mark.parametrize("operand", [0, 1])
def test_scalar_mul_before_gemm_folds_into_alpha(session, rows, operand) -> None:
    mul = ["x", "s"] if operand == 0 else ["s", "x"]
    nodes = [
        helper.make_node("Mul", mul, ["scaled"]),
        helper.make_node("Gemm", ["scaled", "w", "c"], ["y"], alpha=0.5),
    ]
    initializers = {
        "s": np.array([0.0625], np.float32),
        "w": randn(9, 5, seed=2),
        "c": randn(5, seed=3),
    }
    check_against_reference(
        session, nodes, {"x": randn(rows, 9, seed=1)}, ["y"], initializers=initializers
    )


@pytest.mark.parametrize(
    "rows, columns, axis, opset",
    [(1, 10, None, 17), (3, 21, 1, 11), (2, 10, -1, 13), (4, 70, None, 17), (3, 10, 0, 11)],
)
def test_softmax_after_small_batch_gemm(session, rows, columns, axis, opset) -> None:
    """Up to 64 columns and along the rows the Gemm launch normalises the rows itself;
    wider or along axis 0 the Softmax stays a launch of its own. Same results either way."""
    softmax = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("Gemm", ["a", "w", "c"], ["g"]),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("Softmax", ["r"], ["y"], **softmax),
    ]
    initializers = {"w": randn(33, columns, seed=2), "c": randn(columns, seed=3)}
    check_against_reference(
        session,
        nodes,
        {"a": randn(rows, 33, seed=1)},
        ["y"],
        oracle="onnxruntime",
        initializers=initializers,
        opset=opset,
    )


MATMUL_CASES = [
    ((4, 6), (6, 3)),
    ((2, 3, 5, 7), (7, 4)),
    ((2, 1, 5, 7), (3, 7, 9)),
    ((7,), (7, 5)),
    ((3, 4, 7), (7,)),
    ((9, 33), (33, 17)),
]


@pytest.mark.parametrize("a_shape, b_shape", MATMUL_CASES)
@pytest.mark.parametrize("b_constant", [True, False])
def test_matmul(session, a_shape, b_shape, b_constant) -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    inputs = {"a": randn(*a_shape, seed=1)}
    b = randn(*b_shape, seed=2)
    if b_constant:
        check_against_reference(session, [node], inputs, ["y"], initializers={"b": b})
    else:
        check_against_reference(session, [node], {**inputs, "b": b}, ["y"])


def test_matmul_add_bias_fusion(session) -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["s"]),
        helper.make_node("Tanh", ["s"], ["y"]),
    ]
    check_against_reference(
        session,
        nodes,
        {"a": randn(3, 10)},
        ["y"],
        initializers={"w": randn(10, 6, seed=1), "bias": randn(6, seed=2)},
    )


POOL_CASES = [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2]}, (1, 3, 11, 11)),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, (2, 2, 10, 12)),
    ("MaxPool", {"kernel_shape": [2, 3], "pads": [1, 0, 0, 2], "dilations": [2, 1]}, (1, 2, 9, 8)),
    (
        "MaxPool",
        {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
        (1, 2, 7, 8),
    ),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, (1, 3, 6, 7)),
    (
        "AveragePool",
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        (2, 2, 6, 7),
    ),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, (1, 2, 7, 9)),
    ("AveragePool", {"kernel_shape": [3, 2], "auto_pad": "SAME_LOWER"}, (1, 1, 5, 6)),
]


@pytest.mark.parametrize("op, attrs, shape", POOL_CASES, ids=lambda v: str(v))
def test_pool(session, op, attrs, shape) -> None:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    check_against_reference(session, [node], {"x": randn(*shape)}, ["y"], opset=18)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(session, op) -> None:
    node = helper.make_node(op, ["x"], ["y"])
    check_against_reference(session, [node], {"x": randn(2, 5, 7, 3)}, ["y"])


BROADCAST_SHAPES = [
    ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((2, 3, 4, 5), (3, 1, 1)),
    ((2, 3, 4, 5), ()),
    ((1, 3, 1, 5), (2, 1, 4, 1)),
    ((5,), (4, 1)),
]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_broadcasting(session, op, shapes) -> None:
    a = randn(*shapes[0], seed=1)
    b = randn(*shapes[1], seed=2)
    if op == "Pow":
        a = np.abs(a) + 0.5
    if op == "Div":
        b = np.sign(b) * (np.abs(b) + 0.5)
    node = helper.make_node(op, ["a", "b"], ["y"])
    check_against_reference(session, [node], {"a": a, "b": b}, ["y"], opset=13)


def test_prelu_with_per_channel_slope(session) -> None:
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    check_against_reference(
        session,
        [node],
        {"x": randn(2, 3, 4, 5)},
        ["y"],
        initializers={"slope": randn(3, 1, 1, seed=3)},
    )


def test_binary_with_constant_operand_first(session) -> None:
    node = helper.make_node("Sub", ["c", "x"], ["y"])
    check_against_reference(
        session, [node], {"x": randn(2, 3, 4)}, ["y"], initializers={"c": randn(3, 1, seed=5)}
    )


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(session, op) -> None:
    node = helper.make_node(op, ["a", "b", "c"], ["y"])
    inputs = {"a": randn(2, 3, 4, seed=1), "b": randn(3, 1, seed=2), "c": randn(4, seed=3)}
    check_against_reference(session, [node], inputs, ["y"])


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("Relu", {}),
        ("LeakyRelu", {"alpha": 0.2}),
        ("Sigmoid", {}),
        ("Tanh", {}),
        ("Exp", {}),
        ("Neg", {}),
        ("Abs", {}),
        ("Sqrt", {}),
        ("Log", {}),
        ("Reciprocal", {}),
        ("Elu", {"alpha": 0.7}),
        ("Selu", {}),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
        ("Softplus", {}),
        ("Softsign", {}),
        ("Sign", {}),
        ("Erf", {}),
        ("Sin", {}),
        ("Cos", {}),
    ],
)
def test_unary(session, op, attrs) -> None:
    x = randn(3, 17, 5)
    if op in ("Sqrt", "Log", "Reciprocal"):
        x = np.abs(x) + 0.1
    check_against_reference(session, [helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}, ["y"])


@pytest.mark.parametrize("length", [4099, 7])
def test_silu_is_close_to_exact_element_by_element(session, length) -> None:
    """Sigmoid(x) * x runs as one SiLU map with its own exp (``fast_exp``): every element
    within a few float32 ulps of the float64 value, from deep in exp's underflow to its
    overflow, both through the 8-wide loop and the scalar tail; NaN stays NaN."""
    from tests.inference.opencl_cases import make_model

    x = np.linspace(-120.0, 120.0, length, dtype=np.float32)
    x[: min(length, 64)] = randn(min(length, 64), seed=21) * 3.0
    x[-1] = np.nan
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    model = make_model(nodes, {"x": x}, ["y"])
    opencl = session(model)
    found = opencl.run({"x": x})["y"].astype(np.float64)
    (plan,) = opencl._plans.values()
    assert [launch.kernel_name for launch in plan.launches] == ["unary8"]
    exact = x.astype(np.float64) / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.isnan(found[-1])
    error = np.abs(found[:-1] - exact[:-1])
    assert np.all(error <= 1e-6 * np.maximum(np.abs(exact[:-1]), 1e-30)), error.max()


def test_clip_attribute_form_opset_6(session) -> None:
    node = helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)
    check_against_reference(session, [node], {"x": randn(4, 9)}, ["y"], opset=6)


@pytest.mark.parametrize("bounds", [("lo", "hi"), ("lo", ""), ("", "hi")])
def test_clip_input_form_opset_13(session, bounds) -> None:
    node = helper.make_node("Clip", ["x", *bounds], ["y"])
    initializers = {"lo": np.array(-0.3, np.float32), "hi": np.array(0.6, np.float32)}
    used = {k: v for k, v in initializers.items() if k in bounds}
    check_against_reference(session, [node], {"x": randn(4, 9)}, ["y"], initializers=used, opset=13)


@pytest.mark.parametrize("opset, axis", [(11, 1), (11, -1), (11, 0), (13, 1), (13, -1), (13, 0)])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_axis_semantics_by_opset(session, op, opset, axis) -> None:
    """Opset < 13 flattens to 2-D at axis; opset >= 13 normalises along the axis only."""
    node = helper.make_node(op, ["x"], ["y"], axis=axis)
    check_against_reference(
        session, [node], {"x": randn(2, 3, 4)}, ["y"], opset=opset, oracle="onnxruntime"
    )


def test_softmax_semantics_checked_by_hand(session) -> None:
    """Default axis 1 at opset 9 normalises over dims 1.. together; at 13 axis -1 alone."""
    from tests.inference.opencl_cases import assert_close, make_model

    x = randn(2, 3, 4)
    node = helper.make_node("Softmax", ["x"], ["y"])

    def softmax(rows: np.ndarray) -> np.ndarray:
        e = np.exp(rows - rows.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    old = session(make_model([node], {"x": x}, ["y"], opset=9)).run({"x": x})["y"]
    assert_close(old, softmax(x.reshape(2, 12)).reshape(2, 3, 4))
    new = session(make_model([node], {"x": x}, ["y"], opset=13)).run({"x": x})["y"]
    assert_close(new, softmax(x))


def test_lrn(session) -> None:
    node = helper.make_node("LRN", ["x"], ["y"], size=5, alpha=1e-3, beta=0.7, bias=2.0)
    check_against_reference(session, [node], {"x": randn(2, 7, 4, 3)}, ["y"], oracle="onnxruntime")


def test_views_and_data_movement(session) -> None:
    """Reshape (0 and -1), Flatten, Squeeze/Unsqueeze (attribute form), Transpose, Concat."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Unsqueeze", ["t"], ["u"], axes=[0]),
        helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
        helper.make_node("Concat", ["s", "t"], ["c"], axis=-1),
        helper.make_node("Flatten", ["c"], ["y"], axis=2),
        helper.make_node("Identity", ["y"], ["z"]),
        helper.make_node("Dropout", ["z"], ["d"]),
    ]
    check_against_reference(
        session,
        nodes,
        {"x": randn(2, 3, 4, 5)},
        ["y", "d"],
        initializers={"shape": np.array([0, 6, -1, 5], np.int64)},
        opset=11,
    )


def test_squeeze_unsqueeze_input_form_opset_13(session) -> None:
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes2"], ["y"]),
    ]
    check_against_reference(
        session,
        nodes,
        {"x": randn(3, 4)},
        ["y", "u"],
        initializers={"axes": np.array([0, -1], np.int64), "axes2": np.array([0], np.int64)},
        opset=13,
    )


def test_reshape_allowzero(session) -> None:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)
    check_against_reference(
        session,
        [node],
        {"x": randn(2, 6)},
        ["y"],
        initializers={"shape": np.array([3, 4], np.int64)},
        opset=14,
    )


def test_shape_arithmetic_is_folded(session) -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, the exporter's flatten idiom."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch"], ["batch1"], axes=[0]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    check_against_reference(
        session,
        nodes,
        {"x": randn(3, 2, 5)},
        ["y"],
        initializers={"zero": np.array(0, np.int64), "minus_one": np.array([-1], np.int64)},
        opset=11,
    )


def test_constant_and_constant_of_shape(session) -> None:
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["shape"],
            value=helper.make_tensor("s", onnx.TensorProto.INT64, [2], [3, 4]),
        ),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["fill"],
            value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.5]),
        ),
        helper.make_node("Add", ["x", "fill"], ["y"]),
    ]
    check_against_reference(session, nodes, {"x": randn(3, 4)}, ["y"])


def test_pad_expand_gather(session) -> None:
    nodes = [
        helper.make_node("Pad", ["x", "pads", "value"], ["p"]),
        helper.make_node("Expand", ["p", "shape"], ["e"]),
        helper.make_node("Gather", ["e", "indices"], ["y"], axis=1),
    ]
    check_against_reference(
        session,
        nodes,
        {"x": randn(1, 3, 4)},
        ["y"],
        initializers={
            "pads": np.array([0, 1, 0, 0, 2, 1], np.int64),
            "value": np.array(1.5, np.float32),
            "shape": np.array([2, 1, 1], np.int64),
            "indices": np.array([[0, 5], [-1, 2]], np.int64),
        },
        opset=13,
    )


def test_symbolic_batch_plans_per_shape(session) -> None:
    from tests.inference.opencl_cases import make_model, reference

    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    weights = {"w": randn(8, 3, 3, 3, seed=1)}
    model = make_model(
        [node],
        {"x": randn(1, 3, 6, 6)},
        ["y"],
        initializers=weights,
        input_shapes={"x": ["N", 3, 6, 6]},
    )
    opencl = session(model)
    assert opencl.inputs["x"][0] == ("N", 3, 6, 6)
    for batch in (1, 4, 1):
        x = randn(batch, 3, 6, 6, seed=batch)
        from tests.inference.opencl_cases import assert_close

        assert_close(opencl.run({"x": x})["y"], reference(model, {"x": x})[0])
    assert len(opencl._plans) == 2


@pytest.mark.parametrize(
    "starts, ends, axes, steps",
    [
        ([1, 0], [3, 10], [0, 2], [1, 2]),
        ([-1], [-100], [1], [-1]),
        ([0, 2], [2**62, -1], [-1, 1], None),
    ],
)
def test_slice(session, starts, ends, axes, steps) -> None:
    initializers = {
        "starts": np.array(starts, np.int64),
        "ends": np.array(ends, np.int64),
        "axes": np.array(axes, np.int64),
    }
    names = ["x", "starts", "ends", "axes"]
    if steps is not None:
        initializers["steps"] = np.array(steps, np.int64)
        names.append("steps")
    node = helper.make_node("Slice", names, ["y"])
    check_against_reference(
        session, [node], {"x": randn(4, 5, 6)}, ["y"], initializers=initializers, opset=13
    )


def test_slice_attribute_form_opset_9(session) -> None:
    node = helper.make_node("Slice", ["x"], ["y"], starts=[1, -3], ends=[100, -1], axes=[0, 2])
    check_against_reference(session, [node], {"x": randn(3, 4, 5)}, ["y"], opset=9)


@pytest.mark.parametrize("opset", [11, 13])
def test_split(session, opset) -> None:
    if opset < 13:
        node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, split=[1, 3, 2])
        initializers = {}
    else:
        node = helper.make_node("Split", ["x", "split"], ["a", "b", "c"], axis=-1)
        initializers = {"split": np.array([2, 2, 1], np.int64)}
    check_against_reference(
        session,
        [node],
        {"x": randn(2, 6, 5)},
        ["a", "b", "c"],
        initializers=initializers,
        opset=opset,
    )


@pytest.mark.parametrize(
    "op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"]
)
@pytest.mark.parametrize("axes, keepdims", [([1], 1), ([0, 2], 0), ([], 1), ([-1], 0)])
def test_reductions(session, op, axes, keepdims) -> None:
    attrs = {"keepdims": keepdims}
    if axes:
        attrs["axes"] = axes
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    check_against_reference(session, [node], {"x": randn(3, 4, 5) * 0.5 + 1.0}, ["y"], opset=11)


def test_reduce_sum_axes_input_opset_13(session) -> None:
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    check_against_reference(
        session,
        [node],
        {"x": randn(3, 4, 5)},
        ["y"],
        initializers={"axes": np.array([0, -1], np.int64)},
        opset=13,
    )
