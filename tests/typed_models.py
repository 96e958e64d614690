"""Small ONNX models whose inputs and outputs are the element types numpy has no plain
dtype for (tensor_types.py): ONNX strings and bfloat16. Built with ``onnx.helper`` so the
tests need no model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def string_model(path: Path) -> Path:
    """``text`` (string, ``[n]``) -> ``shout`` = text + "!" (StringConcat), ``same``
    (Identity) and ``is_hi`` = text == "hi" (bool)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("StringConcat", ["text", "bang"], ["shout"]),
            helper.make_node("Identity", ["text"], ["same"]),
            helper.make_node("Equal", ["text", "hi"], ["is_hi"]),
        ],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [
            helper.make_tensor_value_info("shout", TensorProto.STRING, ["n"]),
            helper.make_tensor_value_info("same", TensorProto.STRING, ["n"]),
            helper.make_tensor_value_info("is_hi", TensorProto.BOOL, ["n"]),
        ],
        [
            helper.make_tensor("bang", TensorProto.STRING, [], [b"!"]),
            helper.make_tensor("hi", TensorProto.STRING, [], [b"hi"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def bfloat16_model(path: Path) -> Path:
    """``x`` (bfloat16, ``[n, 3]``) -> ``y`` = bfloat16(float(x) * 3 + 0.1) and ``wide`` =
    float(x) (float32): a Cast each way and a rounding to bfloat16 inside."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["wide", "three"], ["scaled"]),
            helper.make_node("Add", ["scaled", "tenth"], ["shifted"]),
            helper.make_node("Cast", ["shifted"], ["y"], to=TensorProto.BFLOAT16),
        ],
        "bfloat16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["n", 3]),
            helper.make_tensor_value_info("wide", TensorProto.FLOAT, ["n", 3]),
        ],
        [
            numpy_helper.from_array(np.array(3.0, np.float32), "three"),
            numpy_helper.from_array(np.array(0.1, np.float32), "tenth"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs from onnxruntime itself, bfloat16 fed and read back through
    float32 (onnxruntime's Python API takes no bfloat16 arrays; the casts are exact)."""
    import ml_dtypes
    import onnx
    import onnxruntime
    from onnx import TensorProto

    model = onnx.load(str(path))
    bf16 = TensorProto.BFLOAT16
    if any(v.type.tensor_type.elem_type == bf16 for v in model.graph.input):
        from onnx import helper

        # The reference widens by hand: a float32 input cast to bfloat16 first, a
        # bfloat16 output cast to float32 last.
        graph = model.graph
        renamed = {}
        for value in graph.input:
            if value.type.tensor_type.elem_type == bf16:
                renamed[value.name] = value.name + "_f32"
                graph.node.insert(
                    0, helper.make_node("Cast", [value.name + "_f32"], [value.name], to=bf16)
                )
                value.name += "_f32"
                value.type.tensor_type.elem_type = TensorProto.FLOAT
        for value in graph.output:
            if value.type.tensor_type.elem_type == bf16:
                graph.node.append(
                    helper.make_node(
                        "Cast", [value.name], [value.name + "_f32"], to=TensorProto.FLOAT
                    )
                )
                value.name += "_f32"
                value.type.tensor_type.elem_type = TensorProto.FLOAT
        feeds = {
            renamed.get(name, name): array.astype(np.float32) if name in renamed else array
            for name, array in feeds.items()
        }
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, feeds), strict=True))
    return {
        name.removesuffix("_f32"): value.astype(ml_dtypes.bfloat16)
        if name.endswith("_f32")
        else value
        for name, value in outputs.items()
    }
