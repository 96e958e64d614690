"""Transformer, segmentation and detection building blocks on the OpenCL engine, checked
against onnxruntime: integer and bool tensors, shape inputs planned on the host per value,
normalisations, attention, transposed convolution, Resize, and function operators.

Float outputs must be within 1e-4 * max(1, |reference|); integer and bool outputs exact.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from meshgpu.errors import UnsupportedOperatorError
from meshgpu.inference.opencl import OpenCLSession
from tests.inference.opencl_cases import assert_close, randn

pytest.importorskip("pyopencl")


@pytest.fixture(scope="module")
def device():
    from meshgpu.inference.opencl.programs import default_device

    return default_device()


def _model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: dict[str, int],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 18,
    input_shapes: dict[str, list[int | str]] | None = None,
) -> onnx.ModelProto:
    shapes = input_shapes or {}
    graph = helper.make_graph(
        nodes,
        "block",
        [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(a.dtype), shapes.get(name, list(a.shape))
            )
            for name, a in inputs.items()
        ],
        [helper.make_tensor_value_info(name, kind, None) for name, kind in outputs.items()],
        initializer=[numpy_helper.from_array(v, n) for n, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [np.asarray(v) for v in session.run(None, feeds)]


def _check(device, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> OpenCLSession:
    session = OpenCLSession(model, device=device)
    got = session.run(feeds)
    expected = _onnxruntime(model, feeds)
    for name, want in zip(session.outputs, expected, strict=True):
        assert got[name].dtype == want.dtype, f"{name}: {got[name].dtype} != {want.dtype}"
        if want.dtype.kind in "iub":
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        else:
            assert_close(got[name], want, name)
    return session


def test_encoder_layer_with_token_ids_and_attention_mask(device) -> None:
    """Embedding Gather on int64 ids, an int64 padding mask turned into an additive bias,
    4-D batched MatMuls, Softmax on the last axis, LayerNormalization and Erf-GELU."""
    batch, length, width, heads = 2, 5, 16, 2
    head = width // heads
    ids = np.array([[1, 4, 2, 7, 0], [3, 3, 9, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    weights = {
        "embedding": randn(10, width, seed=1),
        "wq": randn(width, width, seed=2) * 0.3,
        "wk": randn(width, width, seed=3) * 0.3,
        "wv": randn(width, width, seed=4) * 0.3,
        "gamma": randn(width, seed=5),
        "beta": randn(width, seed=6),
        "heads_shape": np.array([batch, length, heads, head], np.int64),
        "merged_shape": np.array([batch, length, width], np.int64),
        "mask_axes": np.array([1, 2], np.int64),
        "big": np.array(-10000.0, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "root_half": np.array(0.70710678, np.float32),
        "scale": np.array(1 / np.sqrt(head), np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["embedding", "ids"], ["x"]),
        *(helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}2"]) for p in "qkv"),
        *(helper.make_node("Reshape", [f"{p}2", "heads_shape"], [f"{p}4"]) for p in "qkv"),
        helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Unsqueeze", ["mask", "mask_axes"], ["mask4"]),
        helper.make_node("Cast", ["mask4"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "big"], ["bias"]),
        helper.make_node("Add", ["scaled", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "vt"], ["context"]),
        helper.make_node("Transpose", ["context"], ["merged4"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["merged4", "merged_shape"], ["merged"]),
        helper.make_node("Add", ["merged", "x"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["normed"]),
        helper.make_node("Mul", ["normed", "root_half"], ["g1"]),
        helper.make_node("Erf", ["g1"], ["g2"]),
        helper.make_node("Add", ["g2", "one"], ["g3"]),
        helper.make_node("Mul", ["normed", "g3"], ["g4"]),
        helper.make_node("Mul", ["g4", "half"], ["y"]),
        helper.make_node("ArgMax", ["y"], ["best"], axis=-1, keepdims=0),
    ]
    model = _model(
        nodes,
        {"ids": ids, "mask": mask},
        {"y": TensorProto.FLOAT, "best": TensorProto.INT64},
        weights,
    )
    _check(device, model, {"ids": ids, "mask": mask})


def test_causal_mask_with_where_trilu_and_comparisons(device) -> None:
    scores = randn(1, 2, 4, 4, seed=7)
    nodes = [
        helper.make_node("Trilu", ["ones"], ["lower"], upper=0),
        helper.make_node("Cast", ["lower"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("Where", ["keep", "scores", "minus_inf"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("Greater", ["probs", "quarter"], ["large"]),
        helper.make_node("Not", ["large"], ["small"]),
        helper.make_node("IsInf", ["masked"], ["infinite"]),
        helper.make_node("CumSum", ["probs", "axis"], ["running"]),
    ]
    model = _model(
        nodes,
        {"scores": scores},
        {
            "probs": TensorProto.FLOAT,
            "small": TensorProto.BOOL,
            "infinite": TensorProto.BOOL,
            "running": TensorProto.FLOAT,
        },
        {
            "ones": np.ones((4, 4), np.float32),
            "minus_inf": np.array(-np.inf, np.float32),
            "quarter": np.array(0.25, np.float32),
            "axis": np.array(3, np.int64),
        },
    )
    _check(device, model, {"scores": scores})


def test_shape_inputs_are_planned_per_value(device) -> None:
    """A Reshape whose target shape is a runtime input: each value gets its own plan, and
    shape arithmetic on it folds on the host (nothing of it runs on the device)."""
    x = randn(2, 3, 4)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    model = _model(
        nodes,
        {"x": x, "shape": np.array([6, 4], np.int64)},
        {"y": TensorProto.FLOAT},
        input_shapes={"shape": [2]},
    )
    session = OpenCLSession(model, device=device)
    for target in ([6, 4], [4, 6], [24, 1]):
        shape = np.array(target, np.int64)
        got = session.run({"x": x, "shape": shape})["y"]
        np.testing.assert_allclose(got, np.maximum(x.reshape(target), 0))
    assert len(session._plans) == 3


def test_integer_arithmetic_stays_integer(device) -> None:
    a = np.array([[7, -7, 5], [9, 100, -3]], np.int64)
    b = np.array([2, 3, -4], np.int64)
    nodes = [
        helper.make_node("Div", ["a", "b"], ["quotient"]),
        helper.make_node("Mod", ["a", "b"], ["remainder"]),
        helper.make_node("Mul", ["a", "b"], ["product"]),
        helper.make_node("ReduceMax", ["a"], ["largest"], keepdims=0),
        helper.make_node("Equal", ["a", "b"], ["same"]),
        helper.make_node("Gather", ["a", "picks"], ["picked"], axis=1),
    ]
    picks = np.array([2, 0, -1, 1], np.int64)
    feeds = {"a": a, "b": b, "picks": picks}
    model = _model(
        nodes,
        feeds,
        {
            "quotient": TensorProto.INT64,
            "remainder": TensorProto.INT64,
            "product": TensorProto.INT64,
            "largest": TensorProto.INT64,
            "same": TensorProto.BOOL,
            "picked": TensorProto.INT64,
        },
    )
    _check(device, model, feeds)


def test_decoder_block_conv_transpose_instance_norm_resize(device) -> None:
    """U-Net and segmentation-head pieces: ConvTranspose (stride 2, groups, output
    padding), InstanceNormalization, GroupNormalization, linear and nearest Resize,
    DepthToSpace and reflect Pad."""
    x = randn(1, 4, 5, 6, seed=11)
    initializers = {
        "w": randn(4, 3, 3, 3, seed=12) * 0.3,
        "b": randn(6, seed=13),
        "scale": randn(6, seed=14),
        "shift": randn(6, seed=15),
        "scales": np.array([1, 1, 1.5, 2.0], np.float32),
        "sizes": np.array([1, 6, 7, 9], np.int64),
    }
    nodes = [
        helper.make_node(
            "ConvTranspose",
            ["x", "w", "b"],
            ["up"],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 0],
            group=2,
        ),
        helper.make_node("InstanceNormalization", ["up", "scale", "shift"], ["normed"]),
        helper.make_node(
            "GroupNormalization", ["normed", "scale", "shift"], ["grouped"], num_groups=3
        ),
        helper.make_node("Resize", ["grouped", "", "scales"], ["linear"], mode="linear"),
        helper.make_node(
            "Resize",
            ["grouped", "", "", "sizes"],
            ["nearest"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node("DepthToSpace", ["grouped"], ["space"], blocksize=1),
        helper.make_node("Pad", ["linear", "pads"], ["padded"], mode="reflect"),
    ]
    initializers["pads"] = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    model = _model(
        nodes,
        {"x": x},
        {"nearest": TensorProto.FLOAT, "space": TensorProto.FLOAT, "padded": TensorProto.FLOAT},
        initializers,
        opset=21,
    )
    _check(device, model, {"x": x})


def _kernels(session: OpenCLSession) -> list[str]:
    return [launch.kernel_name for plan in session._plans.values() for launch in plan.launches]


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attributes"),
    [
        ((2, 3, 7), (3, 5, 4), {"strides": [3], "pads": [1, 2]}),
        (
            (1, 4, 3, 4, 5),
            (4, 2, 2, 3, 2),
            {"strides": [2, 1, 2], "pads": [0, 1, 0, 0, 1, 1], "group": 2},
        ),
        ((1, 2, 3, 4, 5), (2, 3, 2, 2, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 2, 2]}),
        (
            (1, 3, 2, 3, 4),
            (3, 2, 3, 2, 2),
            {"dilations": [2, 1, 1], "output_padding": [1, 0, 1], "strides": [2, 1, 2]},
        ),
    ],
)
@pytest.mark.parametrize("weights_at_run_time", [False, True])
def test_conv_transpose_1d_and_3d(
    device, x_shape, w_shape, attributes, weights_at_run_time
) -> None:
    """Constant weights run as a GEMM and a gather, run-time weights as the direct kernel;
    both agree with onnxruntime for 1-D and 3-D layers with groups, pads, dilations and
    output padding."""
    x = randn(*x_shape, seed=31)
    w = randn(*w_shape, seed=32)
    b = randn(w_shape[1] * attributes.get("group", 1), seed=33)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attributes)
    feeds = {"x": x, "w": w} if weights_at_run_time else {"x": x}
    initializers = {"b": b} if weights_at_run_time else {"w": w, "b": b}
    model = _model([node], feeds, {"y": TensorProto.FLOAT}, initializers)
    kernels = _kernels(_check(device, model, feeds))
    if weights_at_run_time:
        assert kernels == ["conv_transpose_direct"]
    else:
        assert kernels[-1] == "col2im_gather"


def test_conv_transpose_fuses_its_tail_and_writes_into_a_concat(device) -> None:
    """U-Net's decoder step: the gather applies the following Relu and writes its result
    into its channel slice of the Concat, so no copy of it is made."""
    x = randn(2, 8, 5, 6, seed=34)
    skip = randn(2, 3, 10, 12, seed=35)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["up"], strides=[2, 2]),
        helper.make_node("Mul", ["up", "gain"], ["scaled"]),
        helper.make_node("Relu", ["scaled"], ["act"]),
        helper.make_node("Concat", ["act", "skip"], ["y"], axis=1),
    ]
    initializers = {
        "w": randn(8, 4, 2, 2, seed=36),
        "b": randn(4, seed=37),
        "gain": randn(1, 4, 1, 1, seed=38),
    }
    feeds = {"x": x, "skip": skip}
    model = _model(nodes, feeds, {"y": TensorProto.FLOAT}, initializers)
    kernels = _kernels(_check(device, model, feeds))
    assert kernels.count("col2im_gather") == 1
    assert "unary8" not in kernels and "binary" not in kernels
    assert len(kernels) == 3  # the GEMM, the gather, and the copy of the other input only


@pytest.mark.parametrize("spatial", [(4, 6), (5, 3)])
def test_instance_and_group_norm_take_the_following_activation(device, spatial) -> None:
    """InstanceNormalization then LeakyRelu (U-Net) and GroupNormalization then Relu each
    run as one launch, eight lanes at a time where a channel's pixels are a multiple of 8."""
    x = randn(2, 6, *spatial, seed=41)
    initializers = {"scale": randn(6, seed=42), "shift": randn(6, seed=43)}
    nodes = [
        helper.make_node("InstanceNormalization", ["x", "scale", "shift"], ["normed"]),
        helper.make_node("LeakyRelu", ["normed"], ["leaky"], alpha=0.2),
        helper.make_node(
            "GroupNormalization", ["leaky", "scale", "shift"], ["grouped"], num_groups=3
        ),
        helper.make_node("Relu", ["grouped"], ["y"]),
    ]
    model = _model(nodes, {"x": x}, {"y": TensorProto.FLOAT}, initializers, opset=21)
    assert _kernels(_check(device, model, {"x": x})) == ["normalize_rows", "normalize_rows"]


def test_function_operators_run_as_their_bodies(device) -> None:
    """Opset-23 Attention with a causal mask: no lowering of its own, it runs as the
    function body the ONNX schema defines (checked against onnx.reference, which
    evaluates the same definition)."""
    from onnx.reference import ReferenceEvaluator

    q, k, v = randn(1, 2, 4, 8, seed=21), randn(1, 2, 6, 8, seed=22), randn(1, 2, 6, 8, seed=23)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)
    model = _model([node], {"q": q, "k": k, "v": v}, {"y": TensorProto.FLOAT}, opset=23)
    got = OpenCLSession(model, device=device).run({"q": q, "k": k, "v": v})["y"]
    (want,) = ReferenceEvaluator(model).run(None, {"q": q, "k": k, "v": v})
    assert_close(got, want, "attention")


def test_unsupported_attribute_values_name_themselves(device) -> None:
    x = randn(1, 1, 2, 3, 4, 2)
    w = randn(1, 1, 2, 2, 2, 2)
    model = _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv4d")],
        {"x": x},
        {"y": TensorProto.FLOAT},
        {"w": w},
    )
    with pytest.raises(UnsupportedOperatorError, match=r"ConvTranspose.*deconv4d.*2-D and 3-D"):
        OpenCLSession(model, device=device)
    lstm = _model(
        [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2, name="rnn")],
        {"x": randn(2, 1, 3)},
        {"y": TensorProto.FLOAT},
        {"w": randn(1, 8, 3), "r": randn(1, 8, 2)},
    )
    with pytest.raises(UnsupportedOperatorError, match=r"LSTM \(opset 18\).*rnn"):
        OpenCLSession(lstm, device=device)


@pytest.mark.parametrize("halving_first", [False, True])
def test_exported_layer_norm_and_gelu_subgraphs_become_one_kernel_each(
    device, halving_first: bool
) -> None:
    """torch's pre-opset-17 LayerNorm and pre-opset-20 GELU subgraphs are rewritten to
    LayerNormalization and Gelu nodes (two launches instead of fourteen) and still match
    onnxruntime, which runs them as written."""
    x = randn(2, 5, 16)
    constants = {
        "sqrt2": np.array(1.4142135, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "axes": np.array([-1], np.int64),
        "two": np.array(2.0, np.float32),
        "eps": np.array(1e-5, np.float32),
        "gamma": randn(16, seed=3),
        "beta": randn(16, seed=4),
    }
    gelu_tail = (
        [
            helper.make_node("Mul", ["ln", "half"], ["halved"]),
            helper.make_node("Mul", ["halved", "c"], ["y"]),
        ]
        if halving_first
        else [
            helper.make_node("Mul", ["ln", "c"], ["scaled"]),
            helper.make_node("Mul", ["scaled", "half"], ["y"]),
        ]
    )
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["p"]),
        helper.make_node("ReduceMean", ["p", "axes"], ["v"]),
        helper.make_node("Add", ["v", "eps"], ["e"]),
        helper.make_node("Sqrt", ["e"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["o"]),
        helper.make_node("Add", ["o", "beta"], ["ln"]),
        helper.make_node("Div", ["ln", "sqrt2"], ["a"]),
        helper.make_node("Erf", ["a"], ["r"]),
        helper.make_node("Add", ["r", "one"], ["c"]),
        *gelu_tail,
    ]
    model = _model(nodes, {"x": x}, {"y": TensorProto.FLOAT}, constants)
    session = _check(device, model, {"x": x})
    assert [node.op for node in session._graph.nodes] == ["LayerNormalization", "Gelu"]
    assert len(next(iter(session._plans.values())).launches) == 2


def test_a_lookalike_with_other_constants_is_left_as_written(device) -> None:
    x = randn(3, 8)
    nodes = [
        helper.make_node("Div", ["x", "not_sqrt2"], ["a"]),
        helper.make_node("Erf", ["a"], ["r"]),
        helper.make_node("Add", ["r", "one"], ["c"]),
        helper.make_node("Mul", ["x", "c"], ["d"]),
        helper.make_node("Mul", ["d", "half"], ["y"]),
    ]
    constants = {
        "not_sqrt2": np.array(1.5, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    model = _model(nodes, {"x": x}, {"y": TensorProto.FLOAT}, constants)
    session = _check(device, model, {"x": x})
    assert "Gelu" not in [node.op for node in session._graph.nodes]


def test_gpt2_tanh_gelu_and_silu_subgraphs_become_one_map_each(device) -> None:
    x = randn(2, 3, 8)
    constants = {
        "three": np.array(3.0, np.float32),
        "c": np.array(0.044715, np.float32),
        "root": np.array(0.7978845608, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("Pow", ["x", "three"], ["cube"]),
        helper.make_node("Mul", ["c", "cube"], ["weighted"]),
        helper.make_node("Add", ["x", "weighted"], ["inner"]),
        helper.make_node("Mul", ["root", "inner"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["shifted"]),
        helper.make_node("Mul", ["x", "half"], ["halved"]),
        helper.make_node("Mul", ["halved", "shifted"], ["gelu"]),
        helper.make_node("Sigmoid", ["gelu"], ["gate"]),
        helper.make_node("Mul", ["gelu", "gate"], ["y"]),
    ]
    model = _model(nodes, {"x": x}, {"y": TensorProto.FLOAT}, constants)
    session = _check(device, model, {"x": x})
    assert [node.op for node in session._graph.nodes] == ["Gelu", "Swish"]


@pytest.mark.parametrize(
    ("table_shape", "axis", "ids_shape"),
    [((50, 24), 0, (3, 7)), ((2, 11, 4, 5), 1, (6,)), ((9, 16), 0, (4,)), ((30, 8), 0, (5,))],
)
def test_gather_by_rows_and_by_elements(device, table_shape, axis, ids_shape) -> None:
    """Slices of 16 or more elements are copied a row per work-item (``gather_rows``),
    shorter ones element by element; both wrap negative indices the same way."""
    table = randn(*table_shape, seed=4)
    size = table_shape[axis]
    ids = np.random.default_rng(5).integers(-size, size, ids_shape).astype(np.int64)
    model = _model(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=axis)],
        {"table": table, "ids": ids},
        {"rows": TensorProto.FLOAT},
    )
    session = _check(device, model, {"table": table, "ids": ids})
    inner = int(np.prod(table_shape[axis + 1 :]))
    plan = next(iter(session._plans.values()))
    kernels = [launch.kernel_name for launch in plan.launches]
    assert kernels == (["gather_rows"] if inner >= 16 else ["gather"])
