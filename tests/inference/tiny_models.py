"""Small ONNX models built in code for the inference tests (no files, no network)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def unsupported_op_model() -> onnx.ModelProto:
    """Relu feeding Det, an operator the OpenCL executor does not implement."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["positive"], name="relu"),
            helper.make_node("Det", ["positive"], ["y"], name="determinant"),
        ],
        "uses_det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def huge_model(side: int) -> onnx.ModelProto:
    """x + ConstantOfShape([side, side]): a float32 tensor of side² elements at run time."""
    shape = numpy_helper.from_array(np.array([side, side], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"], name="make_big"),
            helper.make_node("Add", ["x", "big"], ["y"], name="add"),
        ],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [side, side])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def two_input_model() -> onnx.ModelProto:
    """a [N, 3] + b [N, 3] -> sum, with a shared symbolic batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"], name="add")],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def scalar_model() -> onnx.ModelProto:
    """x * x on a rank-0 float32: a scalar in, a scalar out."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["square"], name="square")],
        "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("square", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def runtime_reshape_failure_model() -> onnx.ModelProto:
    """NonZero (onnxruntime only) feeding a Reshape to [3, 5]: fails at run time unless the
    input has exactly 15 non-zero coordinates."""
    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("NonZero", ["x"], ["where"], name="where"),
            helper.make_node("Cast", ["where"], ["float"], to=TensorProto.FLOAT, name="cast"),
            helper.make_node("Reshape", ["float", "shape"], ["y"], name="reshape"),
        ],
        "runtime_failure",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
