"""Bad models and bad feeds fail with errors that name the op, the input or the sizes,
before any device work; buffer planning reuses memory."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from meshgpu.errors import DeviceError, InputError, ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import OpenCLSession, unsupported_operators
from tests.inference.opencl_cases import make_model, randn

pytest.importorskip("pyopencl")


@pytest.fixture(scope="module")
def device():
    from meshgpu.inference.opencl.programs import default_device

    return default_device()


def _relu_model(shape=(2, 3)):
    return make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="act")], {"x": randn(*shape)}, ["y"]
    )


def test_unsupported_operator_names_op_opset_and_node(device) -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Hardmax", ["r"], ["y"], name="the_hardmax"),
        ],
        {"x": randn(2, 3)},
        ["y"],
        opset=15,
    )
    assert unsupported_operators(model) == [("Hardmax", 15, "the_hardmax")]
    with pytest.raises(UnsupportedOperatorError, match=r"Hardmax \(opset 15\).*the_hardmax"):
        OpenCLSession(model, device=device)


def test_unsupported_domain_and_old_opset(device) -> None:
    custom = make_model(
        [helper.make_node("Relu", ["x"], ["y"], domain="com.example")], {"x": randn(2)}, ["y"]
    )
    custom.opset_import.append(helper.make_opsetid("com.example", 3))
    assert unsupported_operators(custom)[0][:2] == ("Relu", 3)
    old_cast = make_model(
        [helper.make_node("Cast", ["x"], ["y"], to="FLOAT")], {"x": randn(2)}, ["y"], opset=5
    )
    assert [op for op, _, _ in unsupported_operators(old_cast)] == ["Cast"]
    with pytest.raises(UnsupportedOperatorError, match=r"Cast \(opset 5\)"):
        OpenCLSession(old_cast, device=device)


def test_non_device_input_types_name_their_consumer(device) -> None:
    model = make_model(
        [helper.make_node("Cast", ["half"], ["y"], to=1, name="to_float")],
        {"half": np.arange(4, dtype=np.float16)},
        ["y"],
    )
    # the op is supported: the reason (an auto backend's fallback reason) names the dtype
    assert unsupported_operators(model) == [
        ("Cast", 17, "to_float; input 'half' is float16, which is not a device type")
    ]
    with pytest.raises(UnsupportedOperatorError, match=r"Cast \(opset 17\).*to_float.*float16"):
        OpenCLSession(model, device=device)


def test_an_input_read_twice_is_named_once() -> None:
    """``Mul(x, x)`` of float16 said "input 'x' is float16, input 'x' is float16"."""
    model = make_model(
        [helper.make_node("Mul", ["half", "half"], ["y"], name="square")],
        {"half": np.arange(4, dtype=np.float16)},
        ["y"],
    )
    assert unsupported_operators(model) == [
        ("Mul", 17, "square; input 'half' is float16, which is not a device type")
    ]


def test_float_only_operators_name_the_type_they_refuse(device) -> None:
    model = make_model(
        [helper.make_node("Softmax", ["ids"], ["y"], name="soft")],
        {"ids": np.arange(4, dtype=np.int64)},
        ["y"],
    )
    with pytest.raises(
        UnsupportedOperatorError, match=r"Softmax \(opset 17\).*'ids' of type int64"
    ):
        OpenCLSession(model, device=device)


def test_legacy_broadcast_of_opset_6_arithmetic(device) -> None:
    """Add-6 with broadcast=1, axis=1 aligns B with A's dimension 1 (not numpy's suffix)."""
    model = make_model(
        [helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)],
        {"x": randn(2, 3, 4, 5)},
        ["y"],
        initializers={"b": randn(3, seed=1)},
        opset=6,
    )
    x = randn(2, 3, 4, 5)
    got = OpenCLSession(model, device=device).run({"x": x})["y"]
    np.testing.assert_allclose(got, x + randn(3, seed=1).reshape(3, 1, 1), atol=1e-6)


def test_nine_architecture_operators_are_supported() -> None:
    import glob
    import os

    import onnx

    folder = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
    models = sorted(glob.glob(os.path.join(folder, "*.onnx")))
    assert len(models) == 9
    for path in models:
        assert unsupported_operators(onnx.load(path, load_external_data=False)) == [], path


@pytest.mark.parametrize(
    "feeds, message",
    [
        ({}, r"missing input 'x'"),
        ({"x": randn(2, 4)}, r"input 'x' has shape \(2, 4\), expected \(2, 3\)"),
        ({"x": randn(2, 3).astype(np.float64)}, r"input 'x' has dtype float64"),
        ({"x": randn(2, 3), "extra": randn(1)}, r"unknown inputs \['extra'\]"),
    ],
)
def test_bad_feeds_name_the_input(device, feeds, message) -> None:
    session = OpenCLSession(_relu_model(), device=device)
    with pytest.raises(InputError, match=message):
        session.run(feeds)


def test_broken_graphs_are_model_errors(device) -> None:
    dangling = make_model(
        [helper.make_node("Relu", ["nowhere"], ["y"], name="lost")], {"x": randn(2)}, ["y"]
    )
    with pytest.raises(ModelError, match=r"lost.*'nowhere'"):
        OpenCLSession(dangling, device=device)
    cycle = make_model(
        [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
        {"x": randn(2)},
        ["b"],
    )
    with pytest.raises(ModelError, match="cycle"):
        OpenCLSession(cycle, device=device)
    no_output = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": randn(2)}, ["z"])
    with pytest.raises(ModelError, match="'z'"):
        OpenCLSession(no_output, device=device)


def test_mismatched_shapes_are_model_errors(device) -> None:
    model = make_model(
        [helper.make_node("Add", ["x", "w"], ["y"], name="bad_add")],
        {"x": randn(2, 3)},
        ["y"],
        initializers={"w": randn(4)},
    )
    with pytest.raises(ModelError, match=r"bad_add.*broadcast"):
        OpenCLSession(model, device=device)


class _TinyDevice:
    """Stands in for a device with 1 KiB of memory; touching anything else would fail."""

    name = "tiny test device"
    global_mem_size = 1024


def test_weights_larger_than_device_memory_fail_before_device_work() -> None:
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        {"x": randn(1, 64)},
        ["y"],
        initializers={"w": randn(64, 64)},
    )
    with pytest.raises(DeviceError, match=r"16384 bytes.*tiny test device.*1024 bytes"):
        OpenCLSession(model, device=_TinyDevice())  # type: ignore[arg-type]


def test_liveness_reuses_buffers_in_a_chain(device) -> None:
    names = ["x", *(f"t{i}" for i in range(8)), "y"]
    nodes = [
        helper.make_node("Neg" if i % 2 else "Abs", [names[i]], [names[i + 1]])
        for i in range(len(names) - 1)
    ]
    model = make_model(nodes, {"x": randn(4, 1000)}, ["y"])  # Neg/Abs do not fuse
    session = OpenCLSession(model, device=device)
    stats = session.plan_statistics({"x": (4, 1000)})
    tensor_bytes = 4 * 1000 * 4
    assert stats["activation_bytes_without_reuse"] == 10 * tensor_bytes
    assert stats["activation_bytes"] <= 3 * tensor_bytes
    x = randn(4, 1000)
    expected = x
    for i in range(len(nodes)):
        expected = -expected if i % 2 else np.abs(expected)
    np.testing.assert_allclose(session.run({"x": x})["y"], expected, atol=1e-5)
    assert session.peak_device_bytes >= stats["activation_bytes"]


def test_outputs_that_are_inputs_or_constants(device) -> None:
    model = make_model(
        [
            helper.make_node("Identity", ["x"], ["same"]),
            helper.make_node(
                "Constant", [], ["const"], value=helper.make_tensor("c", 1, [2], [1.0, 2.0])
            ),
        ],
        {"x": randn(3)},
        ["same", "const"],
    )
    x = randn(3)
    result = OpenCLSession(model, device=device).run({"x": x})
    np.testing.assert_array_equal(result["same"], x)
    np.testing.assert_array_equal(result["const"], [1.0, 2.0])
