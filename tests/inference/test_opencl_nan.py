"""NaN, infinities and -0.0 through the clamp-like activations, on their own and fused into
a product's epilogue, against onnxruntime: a NaN from a bad input must leave the model as
NaN, not as a plausible number (``x > 0 ? x : 0`` and ``fmax``/``fmin`` made it one)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from meshgpu.inference.opencl import OpenCLSession
from tests.inference.opencl_cases import make_model, reference

pytest.importorskip("pyopencl")

#: Every special value, and ordinary ones on both sides of each activation's corners.
SPECIALS = np.array(
    [np.nan, -0.0, 0.0, np.inf, -np.inf, 1.5, -1.5, 7.0, -7.0, 0.25, -np.nan], dtype=np.float32
)

#: (op, attributes, constant inputs after x) of the activations checked on their own.
STANDALONE = [
    ("Relu", {}, {}),
    ("LeakyRelu", {"alpha": 0.1}, {}),
    ("Clip", {}, {"lo": np.float32(-1.0), "hi": np.float32(2.0)}),
    ("HardSigmoid", {}, {}),
    ("HardSwish", {}, {}),
    ("Celu", {"alpha": 1.5}, {}),
    ("Elu", {}, {}),
    ("Selu", {}, {}),
    ("Sign", {}, {}),
    ("ThresholdedRelu", {}, {}),
    ("Shrink", {}, {}),
]

#: Activations a product (Conv, Gemm, MatMul) or a binary map computes in its epilogue.
FUSED = [
    ("Relu", {}, {}),
    ("LeakyRelu", {"alpha": 0.1}, {}),
    ("Clip", {}, {"lo": np.float32(-1.0), "hi": np.float32(2.0)}),
]


@pytest.fixture(scope="module")
def session() -> Callable[[onnx.ModelProto], OpenCLSession]:
    """One OpenCL device for the module; sessions share its context and program cache."""
    from meshgpu.inference.opencl.programs import default_device

    device = default_device()
    return lambda model: OpenCLSession(model, device=device)


def activation(op: str, attrs: dict[str, float], bounds: dict[str, np.ndarray], source: str):
    return helper.make_node(op, [source, *bounds], ["y"], **attrs)


def assert_same_as_onnxruntime(
    opencl: OpenCLSession, model: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> None:
    """Equal to onnxruntime with NaN equal to NaN, infinities exact, and zeros' signs kept."""
    (want,) = reference(model, feeds, "onnxruntime")
    got = opencl.run(feeds)["y"]
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)
    zeros = finite & (want == 0.0)
    assert np.array_equal(np.signbit(got[zeros]), np.signbit(want[zeros])), (got, want)


@pytest.mark.parametrize("op, attrs, bounds", STANDALONE, ids=[case[0] for case in STANDALONE])
@pytest.mark.parametrize("length", [len(SPECIALS), 8 * len(SPECIALS)])
def test_standalone_activation_keeps_nan(session, op, attrs, bounds, length) -> None:
    """The unary map, through the eight-lane loop and the scalar tail alike."""
    x = np.resize(SPECIALS, length).reshape(1, length)
    model = make_model([activation(op, attrs, bounds, "x")], {"x": x}, ["y"], initializers=bounds)
    assert_same_as_onnxruntime(session(model), model, {"x": x})


def _assert_fused(opencl: OpenCLSession) -> None:
    """No separate launch computed the activation: the producer's epilogue did."""
    (plan,) = opencl._plans.values()
    assert not any("unary" in launch.kernel_name for launch in plan.launches), [
        launch.kernel_name for launch in plan.launches
    ]


@pytest.mark.parametrize("op, attrs, bounds", FUSED, ids=[case[0] for case in FUSED])
@pytest.mark.parametrize("producer", ["Conv", "Gemm", "MatMul", "Add"])
def test_fused_activation_keeps_nan(session, producer, op, attrs, bounds) -> None:
    """Each product runs on one input channel (k = 1) with a weight of one, so every special
    value reaches the epilogue unchanged, as it reaches onnxruntime's activation."""
    count = len(SPECIALS)
    if producer == "Conv":
        x = SPECIALS.reshape(1, 1, 1, count)
        initializers = {"w": np.ones((3, 1, 1, 1), np.float32)}
        node = helper.make_node("Conv", ["x", "w"], ["p"])
    elif producer == "Gemm":
        x = SPECIALS.reshape(count, 1)
        initializers = {"w": np.ones((1, 5), np.float32), "b": np.zeros(5, np.float32)}
        node = helper.make_node("Gemm", ["x", "w", "b"], ["p"])
    elif producer == "MatMul":
        x = SPECIALS.reshape(1, count, 1)
        initializers = {"w": np.ones((1, 9), np.float32)}
        node = helper.make_node("MatMul", ["x", "w"], ["p"])
    else:
        x = SPECIALS.reshape(1, count)
        initializers = {"w": np.zeros((1, count), np.float32)}
        node = helper.make_node("Add", ["x", "w"], ["p"])
    nodes = [node, activation(op, attrs, bounds, "p")]
    model = make_model(nodes, {"x": x}, ["y"], initializers={**initializers, **bounds})
    opencl = session(model)
    assert_same_as_onnxruntime(opencl, model, {"x": x})
    _assert_fused(opencl)


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("length", [len(SPECIALS), 8 * len(SPECIALS)])
def test_max_and_min_keep_nan_from_either_operand(session, op, length) -> None:
    """onnxruntime's Max and Min answer NaN when either operand is NaN; ``a > b ? a : b``
    answered b for a NaN a."""
    a = np.resize(SPECIALS, length).reshape(1, length)
    b = np.resize(np.roll(SPECIALS, 3), length).reshape(1, length)
    model = make_model([helper.make_node(op, ["a", "b"], ["y"])], {"a": a, "b": b}, ["y"])
    assert_same_as_onnxruntime(session(model), model, {"a": a, "b": b})


def test_clip_with_bounds_given_at_run_time_keeps_nan(session) -> None:
    """Bounds that are inputs, not constants, lower to Max then Min: NaN must pass both."""
    x = np.resize(SPECIALS, 8 * len(SPECIALS)).reshape(1, -1)
    feeds = {"x": x, "lo": np.array(-1.0, np.float32), "hi": np.array(2.0, np.float32)}
    model = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], feeds, ["y"])
    assert_same_as_onnxruntime(session(model), model, feeds)


@pytest.mark.parametrize("op", ["ScatterElements", "ScatterND"])
@pytest.mark.parametrize("reduction", ["max", "min"])
def test_scatter_max_and_min_treat_nan_as_onnxruntime_does(session, op, reduction) -> None:
    """onnxruntime combines an element so far (a) with an update (b) as ``a > b ? a : b``
    (``a < b ? a : b`` for min): a NaN update replaces the element, and an update after it
    or on a NaN element replaces the NaN. The kernel's ``COMBINES`` are those; ONNX's
    reference evaluator (``np.maximum``, which keeps NaN) differs, and onnxruntime is the
    reference here. Every order of NaN and number, with repeated indices in one run."""
    data = np.array([np.nan, 1.0, 1.0, np.nan, 5.0, -0.0, np.nan, 2.0], np.float32)
    indices = np.array([0, 1, 2, 2, 3, 6, 6, 7, 7, 4], np.int64)
    updates = np.array(
        [2.0, np.nan, np.nan, 3.0, np.inf, np.nan, -1.0, np.nan, np.nan, -np.inf], np.float32
    )
    if op == "ScatterND":
        indices = indices.reshape(-1, 1)
    feeds = {"data": data, "indices": indices, "updates": updates}
    node = helper.make_node(op, ["data", "indices", "updates"], ["y"], reduction=reduction)
    model = make_model([node], feeds, ["y"], opset=18)
    assert_same_as_onnxruntime(session(model), model, feeds)
