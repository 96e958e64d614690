"""Squeeze-and-excitation on the OpenCL engine: the gate's four nodes as one
``excitation_gate`` launch and the scaling Mul as ``channel_scale``, checked against
``onnx.reference`` and pinned to those kernels; lookalikes keep the general lowering."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from meshgpu.inference.opencl import OpenCLSession
from tests.inference.opencl_cases import assert_close, make_model, randn, reference

pytest.importorskip("pyopencl")


def _block(channels, hidden, hidden_activation, gate_activation, *, gate_first=False):
    """x -> ReduceMean -> Conv -> hidden activation -> Conv -> gate activation -> Mul by x."""
    initializers = {
        "axes": np.array([2, 3], np.int64),
        "w1": randn(hidden, channels, 1, 1, seed=21),
        "b1": randn(hidden, seed=22),
        "w2": randn(channels, hidden, 1, 1, seed=23),
        "b2": randn(channels, seed=24),
    }
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["p"]),
        helper.make_node("Conv", ["p", "w1", "b1"], ["c1"]),
    ]
    if hidden_activation == "silu":
        nodes += [
            helper.make_node("Sigmoid", ["c1"], ["s1"]),
            helper.make_node("Mul", ["c1", "s1"], ["h"]),
        ]
    else:
        nodes.append(helper.make_node(hidden_activation, ["c1"], ["h"]))
    nodes += [
        helper.make_node("Conv", ["h", "w2", "b2"], ["c2"]),
        helper.make_node(gate_activation, ["c2"], ["g"]),
        helper.make_node("Mul", ["g", "x"] if gate_first else ["x", "g"], ["y"]),
    ]
    return nodes, initializers


@pytest.mark.parametrize(
    ("channels", "hidden", "hidden_activation", "gate_activation", "size", "gate_first"),
    [
        (24, 8, "Relu", "HardSigmoid", (5, 7), False),  # MobileNetV3
        (20, 5, "silu", "Sigmoid", (4, 4), True),  # EfficientNet, widths off the vector
        (16, 16, "HardSwish", "Sigmoid", (1, 9), False),
    ],
)
def test_squeeze_excitation_runs_as_gate_and_scale(
    channels, hidden, hidden_activation, gate_activation, size, gate_first
) -> None:
    nodes, initializers = _block(
        channels, hidden, hidden_activation, gate_activation, gate_first=gate_first
    )
    inputs = {"x": randn(3, channels, *size, seed=25)}
    model = make_model(nodes, inputs, ["y"], initializers=initializers, opset=18)
    session = OpenCLSession(model, inline=False)
    assert_close(session.run(inputs)["y"], reference(model, inputs)[0], "y")
    (plan,) = session._plans.values()
    kernels = [launch.kernel_name for launch in plan.launches]
    assert kernels == ["global_pool_avg", "excitation_gate", "channel_scale"]


def test_gate_lookalikes_keep_the_general_lowering() -> None:
    """A Tanh hidden layer is no gate this engine fuses; the Mul by a per-image vector
    still scales channels."""
    nodes, initializers = _block(12, 4, "Tanh", "Sigmoid")
    inputs = {"x": randn(2, 12, 3, 3, seed=26)}
    model = make_model(nodes, inputs, ["y"], initializers=initializers, opset=18)
    session = OpenCLSession(model, inline=False)
    assert_close(session.run(inputs)["y"], reference(model, inputs)[0], "y")
    (plan,) = session._plans.values()
    kernels = [launch.kernel_name for launch in plan.launches]
    assert "excitation_gate" not in kernels
    assert kernels[-1] == "channel_scale"


def test_gate_read_by_another_node_is_not_fused() -> None:
    """When the hidden layer is also a graph output, the gate's nodes run one by one."""
    nodes, initializers = _block(12, 4, "Relu", "HardSigmoid")
    inputs = {"x": randn(2, 12, 3, 3, seed=27)}
    model = make_model(nodes, inputs, ["y", "h"], initializers=initializers, opset=18)
    session = OpenCLSession(model, inline=False)
    found = session.run(inputs)
    expected = reference(model, inputs)
    assert_close(found["y"], expected[0], "y")
    assert_close(found["h"], expected[1], "h")
    (plan,) = session._plans.values()
    assert "excitation_gate" not in [launch.kernel_name for launch in plan.launches]
