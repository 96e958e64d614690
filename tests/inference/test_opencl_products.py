"""The strided matrix product (lower_matmul.py): operands read through views, tails fused
into the product's launch, and the copies still made where a view cannot serve. Every model
is checked against onnxruntime (1e-4 * max(1, |reference|)); the launch lists show which
nodes the product absorbed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from meshgpu.inference.opencl import OpenCLSession
from meshgpu.inference.opencl.tensors import reshape_strides
from tests.inference.opencl_cases import assert_close, randn

pytest.importorskip("pyopencl")


@pytest.fixture(scope="module")
def device():
    from meshgpu.inference.opencl.programs import default_device

    return default_device()


def _model(nodes, inputs, outputs, initializers=None, opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "products",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[numpy_helper.from_array(v, n) for n, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _run(device, model, feeds, grids=None) -> list[str]:
    """Run on OpenCL and onnxruntime, compare every output; return the launched kernels
    (and append each launch's grid to ``grids`` when given)."""
    import onnxruntime

    session = OpenCLSession(model, device=device)
    got = session.run(feeds)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    reference = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    for name, want in zip(session.outputs, reference.run(None, feeds), strict=True):
        assert got[name].shape == want.shape, name
        assert_close(got[name], want, name)
    plan = next(iter(session._plans.values()))
    if grids is not None:
        grids.extend(tuple(launch.global_size) for launch in plan.launches)
    return [launch.kernel_name for launch in plan.launches]


def test_reshape_strides_agree_with_numpy() -> None:
    """A view is reshaped without a copy exactly when numpy can do so, to the same elements."""
    rng = np.random.default_rng(0)
    checked = refused = 0
    for _ in range(400):
        shape = [int(d) for d in rng.choice([1, 2, 3, 4, 6], size=rng.integers(1, 5))]
        count = int(np.prod(shape))
        base = np.arange(count * 2, dtype=np.float32).reshape(*shape[:-1], shape[-1] * 2)
        view = base[..., ::2].transpose(rng.permutation(len(shape)))
        divisors = [d for d in range(1, count + 1) if count % d == 0]
        for new in ([count], [1, count], [int(rng.choice(divisors)), -1], [1, *view.shape]):
            new = [count // -int(np.prod(new)) if d == -1 else d for d in new]
            strides = reshape_strides(view.shape, [s // 4 for s in view.strides], new)
            probe = view.view()
            try:
                probe.shape = new
                numpy_can = True
            except AttributeError:
                numpy_can = False
            if strides is None:
                refused += 1
                assert not numpy_can or count == 1, (view.shape, view.strides, new)
                continue
            checked += 1
            read = np.lib.stride_tricks.as_strided(view, new, [s * 4 for s in strides])
            np.testing.assert_array_equal(read, np.ascontiguousarray(view).reshape(new))
    assert checked > 100 and refused > 100


def test_attention_heads_are_views_and_the_tail_is_one_launch(device) -> None:
    """GPT-2's attention as exported: one QKV Gemm, Split, Reshape, Transpose to heads,
    QK^T scaled and masked, Softmax, times V, heads merged back. The head views cost no
    launch and the scale, mask, Softmax and the merging Transpose run inside the products."""
    tokens, width, heads = 12, 32, 4
    head = width // heads
    x = randn(tokens, width, seed=1)
    weights = {
        "w_qkv": randn(width, 3 * width, seed=2) * 0.2,
        "b_qkv": randn(3 * width, seed=3),
        "w_out": randn(width, width, seed=4) * 0.2,
        "b_out": randn(width, seed=5),
        "qkv_shape": np.array([1, tokens, 3 * width], np.int64),
        "head_shape": np.array([1, tokens, heads, head], np.int64),
        "merged_shape": np.array([tokens, width], np.int64),
        "scale": np.array(1 / np.sqrt(head), np.float32),
        "mask": np.triu(np.full((tokens, tokens), -1e4, np.float32), 1)[None, None],
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w_qkv", "b_qkv"], ["qkv2"]),
        helper.make_node("Reshape", ["qkv2", "qkv_shape"], ["qkv"]),
        helper.make_node("Split", ["qkv"], ["q", "k", "v"], axis=2, num_outputs=3),
        *(helper.make_node("Reshape", [p, "head_shape"], [f"{p}4"]) for p in "qkv"),
        helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "vt"], ["context"]),
        helper.make_node("Transpose", ["context"], ["merged4"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["merged4", "merged_shape"], ["merged"]),
        helper.make_node("Gemm", ["merged", "w_out", "b_out"], ["projected"]),
        helper.make_node("Add", ["projected", "x"], ["y"]),
    ]
    kernels = _run(device, _model(nodes, [("x", x)], ["y"], weights), {"x": x})
    assert kernels == ["matmul_tiles"] * 4


def test_a_view_read_by_another_operator_is_copied_for_it(device) -> None:
    """A Transpose read by a MatMul and by an Add, and a Reshape that merges axes a view
    cannot merge: both still give the right values (a copy made for that reader)."""
    a = randn(2, 3, 4, seed=6)
    b = randn(2, 3, 5, seed=7)
    nodes = [
        helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]),  # (2, 4, 3)
        helper.make_node("MatMul", ["at", "b"], ["product"]),  # (2, 4, 5)
        helper.make_node("Add", ["at", "at"], ["doubled"]),
        helper.make_node("Transpose", ["b"], ["bt"], perm=[2, 0, 1]),  # (5, 2, 3)
        helper.make_node("Reshape", ["bt", "flat"], ["bf"]),  # (5, 6): not a view of b
        helper.make_node("MatMul", ["bf", "w"], ["mixed"]),
    ]
    initializers = {"flat": np.array([5, 6], np.int64), "w": randn(6, 3, seed=8)}
    model = _model(nodes, [("a", a), ("b", b)], ["product", "doubled", "mixed"], initializers)
    kernels = _run(device, model, {"a": a, "b": b})
    assert kernels.count("matmul_tiles") == 2


def test_one_index_gather_and_scalar_scales_feed_the_product(device) -> None:
    """ViT's torch export: q, k and v picked from one stacked tensor by Gather of one index,
    q and k each scaled by a constant: views and alpha, one product launch each."""
    x = randn(3, 2, 5, 8, seed=9)  # (qkv, batch, tokens, head)
    scale = np.array(0.5, np.float32)
    nodes = [
        helper.make_node("Gather", ["x", "zero"], ["q"], axis=0),
        helper.make_node("Gather", ["x", "one"], ["k"], axis=0),
        helper.make_node("Gather", ["x", "two"], ["v"], axis=0),
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("Mul", ["kt", "scale"], ["ks"]),
        helper.make_node("MatMul", ["qs", "ks"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["y"]),
    ]
    initializers = {
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "two": np.array(2, np.int64),
        "scale": scale,
    }
    kernels = _run(device, _model(nodes, [("x", x)], ["y"], initializers), {"x": x})
    assert kernels == ["matmul_tiles"] * 2


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [
        ((65, 1, 24), (24, 40)),  # batch dims folded into rows
        ((2, 1, 3, 5, 4), (3, 4, 6)),  # three broadcast batch dimensions
        ((7,), (3, 7, 9)),  # 1-D left operand
        ((2, 5, 7), (7,)),  # 1-D right operand
        ((4, 9, 33), (4, 33, 17)),  # ragged tiles on every edge
        ((2, 3, 20), (2, 20, 17)),  # 3 rows: 4-row tiles
    ],
)
def test_batched_shapes_match(device, a_shape, b_shape) -> None:
    a, b = randn(*a_shape, seed=10), randn(*b_shape, seed=11)
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    _run(device, _model(nodes, [("a", a), ("b", b)], ["y"]), {"a": a, "b": b})


def test_gemm_on_a_device_activation_with_its_epilogue(device) -> None:
    """transA, alpha and beta, a row-broadcast C, a residual Add and Relu in one launch."""
    a = randn(20, 16, seed=12)  # read transposed: A' is (16, 20)
    residual = randn(16, 24, seed=13)
    nodes = [
        helper.make_node("Gemm", ["a", "w", "c"], ["g"], transA=1, alpha=0.5, beta=2.0),
        helper.make_node("Add", ["g", "r"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    initializers = {"w": randn(20, 24, seed=14), "c": randn(1, 24, seed=15)}
    model = _model(nodes, [("a", a), ("r", residual)], ["y"], initializers)
    kernels = _run(device, model, {"a": a, "r": residual})
    assert kernels == ["matmul_tiles"]


@pytest.mark.parametrize(("batch", "side"), [(2, 8), (3, 2), (5, 3), (1, 2)])
def test_convnext_block_tail_and_channels_last_norm(device, batch, side) -> None:
    """ConvNeXt's block after its depthwise conv: permute to channels-last, LayerNorm, two
    Linears (bias, Gelu), permute back, layer scale, residual. The first product reads the
    permute in place and normalises its rows itself (the norm is not a launch of its own)
    where the map's pixels are a multiple of 8, and bias, scale, permute and residual run
    inside the second product. Its
    output goes back to channels-first, so images of fewer pixels than a tile's 8 rows
    (2x2, 3x3) are folded into one run of rows: one batch index in the launch grid; at
    most 4 rows in all take 4-row tiles, and folded rows stored by rows 6-row tiles of 16
    columns where those waste few rows."""
    channels = 16
    x = randn(batch, channels, side, side, seed=16)
    weights = {
        "gamma": randn(channels, seed=17),
        "beta": randn(channels, seed=18),
        "w1": randn(channels, 4 * channels, seed=19) * 0.3,
        "b1": randn(4 * channels, seed=20),
        "w2": randn(4 * channels, channels, seed=21) * 0.3,
        "b2": randn(channels, seed=22),
        "layer_scale": randn(channels, 1, 1, seed=23),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["xt", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Gelu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["o1"]),
        helper.make_node("Transpose", ["o1"], ["o"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["layer_scale", "o"], ["scaled"]),
        helper.make_node("Add", ["scaled", "x"], ["y"]),
    ]
    model = _model(nodes, [("x", x)], ["y"], weights, opset=20)
    grids: list[tuple[int, ...]] = []
    kernels = _run(device, model, {"x": x}, grids)
    if side * side % 8:  # rows the product could not normalise eight lanes at a time
        assert kernels == ["normalize_rows_strided", "matmul_tiles", "matmul_tiles"]
    else:
        assert kernels == ["matmul_tiles", "matmul_tiles"]
    rows_tiles, _, batches = grids[-1]
    rows = batch * side * side
    # folded rows (stored by rows, 16 contiguous weight columns) take 6-row tiles unless
    # those compute over 15% more rows than 8-row ones; at most 4 rows take 4-row tiles
    tile = 4 if rows <= 4 else 6 if -(-rows // 6) * 6 <= 1.15 * (-(-rows // 8) * 8) else 8
    if side * side % 8:
        assert batches == 1 and rows_tiles == -(-batch * side * side // tile)
    else:
        assert batches == batch and rows_tiles == side * side // 8


@pytest.mark.parametrize(
    ("side", "kernel"),
    [(4, "normalize_rows_t8"), (2, "normalize_rows_strided"), (1, "normalize_rows_strided")],
)
def test_channels_first_layer_norm_is_one_launch(device, side, kernel) -> None:
    """ConvNeXt's LayerNorm over the channels of a channels-first map (its stem, downsample
    layers and head): permute, LayerNorm, permute back is one launch reading and writing
    channels-first, eight pixels per work-item where a map has a multiple of 8, one per
    work-item on the 2x2 and 1x1 maps."""
    channels = 12
    x = randn(2, channels, side, side, seed=24)
    weights = {"gamma": randn(channels, seed=25), "beta": randn(channels, seed=26)}
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["xt", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2]),
    ]
    model = _model(nodes, [("x", x)], ["y"], weights, opset=20)
    assert _run(device, model, {"x": x}) == [kernel]


def test_layer_norm_keeps_a_permute_that_is_not_the_way_back(device) -> None:
    x = randn(2, 8, 4, 4, seed=27)
    weights = {"gamma": randn(8, seed=28), "beta": randn(8, seed=29)}
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["xt", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("Transpose", ["n"], ["y"], perm=[0, 3, 2, 1]),
    ]
    model = _model(nodes, [("x", x)], ["y"], weights, opset=20)
    kernels = _run(device, model, {"x": x})
    assert kernels[0] == "normalize_rows_t8" and len(kernels) == 2


@pytest.mark.parametrize(
    ("shape", "with_bias", "also_output"),
    [((3, 5, 20), True, False), ((6, 24), False, False), ((2, 4, 3, 16), True, True)],
)
def test_layer_norm_before_a_linear_is_the_products_prologue(
    device, shape, with_bias, also_output
) -> None:
    """A LayerNormalization over the last axis read only by a MatMul with constant weights
    runs in the product's launch (ragged K, no bias, another epsilon included); when the
    norm's output is read elsewhere too (here: a graph output) it keeps its own launch."""
    depth = shape[-1]
    x = randn(*shape, seed=30) * 3.0 + 1.5
    weights = {"gamma": randn(depth, seed=31), "w": randn(depth, 12, seed=32)}
    norm_inputs = ["x", "gamma"]
    if with_bias:
        weights["beta"] = randn(depth, seed=33)
        norm_inputs.append("beta")
    nodes = [
        helper.make_node("LayerNormalization", norm_inputs, ["n"], axis=-1, epsilon=1e-3),
        helper.make_node("MatMul", ["n", "w"], ["y"]),
    ]
    outputs = ["y", "n"] if also_output else ["y"]
    kernels = _run(device, _model(nodes, [("x", x)], outputs, weights), {"x": x})
    assert kernels[-1] == "matmul_tiles"
    assert (len(kernels) == 2) == also_output


@pytest.mark.parametrize("product", ["Gemm", "GemmTransB", "MatMul"])
def test_layer_norm_through_a_reshape_into_a_gemm_is_one_launch(device, product) -> None:
    """GPT-2's exported form: LayerNormalization, Reshape to (tokens, features), Gemm with
    its bias (or a MatMul): the norm and the Reshape run in the product's launch."""
    x = randn(3, 8, 16, seed=40)
    weights = {
        "gamma": randn(16, seed=41),
        "beta": randn(16, seed=42),
        "w": randn(12, 16, seed=43) if product == "GemmTransB" else randn(16, 12, seed=43),
        "c": randn(12, seed=44),
        "flat": np.array([24, 16], np.int64),
    }
    if product == "MatMul":
        last = helper.make_node("MatMul", ["r", "w"], ["y"])
    else:
        last = helper.make_node(
            "Gemm", ["r", "w", "c"], ["y"], transB=int(product == "GemmTransB"), alpha=0.5
        )
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("Reshape", ["n", "flat"], ["r"]),
        last,
    ]
    kernels = _run(device, _model(nodes, [("x", x)], ["y"], weights), {"x": x})
    assert kernels == ["matmul_tiles"]


@pytest.mark.parametrize(
    ("rows", "depth", "cols", "tile"),
    [
        (13, 7, 40, 6),  # 3 tiles of 6 rows (18 against 16 of 8): two pairs and one block
        (50, 64, 33, 6),  # one pair, then a block of 8 and one of 1 column
        (8, 20, 48, 8),  # 8 rows: 6-row tiles would compute 12
        (3, 5, 24, 4),  # 4-row tiles, also 16 columns at a time
        (22, 1, 16, 6),  # depth 1
    ],
)
def test_register_tiles_of_16_columns(device, rows, depth, cols, tile) -> None:
    """Products with constant weights (and, second, with a device right operand) compute 16
    columns per step where two blocks of contiguous columns are left, in 6-row tiles unless
    those waste rows (and 4-row ones for at most 4 rows); with a per-row scale, a bias, a
    residual and the tanh Gelu (or a per-row bias and Relu) in the epilogue of both
    blocks, on ragged edges."""
    x = randn(rows, depth, seed=50)
    b = randn(depth, cols, seed=51)
    weights = {
        "w": b,
        "c": randn(cols, seed=52),
        "m": randn(rows, 1, seed=56),
        "column": randn(rows, 1, seed=57),
    }
    residual = randn(rows, cols, seed=53)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["p"]),
        helper.make_node("Mul", ["p", "m"], ["pm"]),
        helper.make_node("Add", ["pm", "c"], ["pc"]),
        helper.make_node("Add", ["pc", "r"], ["s"]),
        helper.make_node("Gelu", ["s"], ["y"], approximate="tanh"),
        helper.make_node("MatMul", ["x", "b"], ["z0"]),
        helper.make_node("Add", ["z0", "column"], ["z1"]),
        helper.make_node("Relu", ["z1"], ["z"]),
    ]
    model = _model(nodes, [("x", x), ("r", residual), ("b", b)], ["y", "z"], weights, opset=20)
    grids: list[tuple[int, ...]] = []
    kernels = _run(device, model, {"x": x, "r": residual, "b": b}, grids)
    assert kernels == ["matmul_tiles", "matmul_tiles"]
    assert [grid[0] for grid in grids] == [-(-rows // tile)] * 2


@pytest.mark.parametrize(("tokens", "head"), [(16, 16), (17, 13), (5, 3), (9, 24)])
def test_keys_read_along_k(device, tokens, head) -> None:
    """QK^T reads K^T in place, its columns contiguous along k: eight of them are loaded
    as vectors and transposed in registers, the depth past a multiple of 8 and the columns
    past the last full block element by element; the scale, a mask of float32's lowest
    value (GPT-2's) and Softmax fused after it."""
    q = randn(2, 3, tokens, head, seed=54)
    k = randn(2, 3, tokens, head, seed=55)
    lowest = np.finfo(np.float32).min
    mask = np.triu(np.full((tokens, tokens), lowest, np.float32), 1)[None, None]
    weights = {"scale": np.array(1 / np.sqrt(head), np.float32), "mask": mask}
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["y"], axis=-1),
    ]
    model = _model(nodes, [("q", q), ("k", k)], ["y"], weights)
    assert _run(device, model, {"q": q, "k": k}) == ["matmul_tiles"]


@pytest.mark.parametrize(
    ("op", "attributes"),
    [
        ("Sigmoid", {}),
        ("Tanh", {}),
        ("Gelu", {"approximate": "tanh"}),
        ("Gelu", {}),
        ("Softmax", {"axis": -1}),
    ],
)
def test_epilogue_functions_over_a_wide_range(device, op, attributes) -> None:
    """The product's epilogue computes exp and tanh inline (no builtin call): fused
    activations and Softmax on values from -100 to 100, and on tiny ones, match."""
    x = (
        np.concatenate([np.linspace(-100, 100, 8 * 48), np.linspace(-1e-3, 1e-3, 8 * 16)])
        .astype(np.float32)
        .reshape(64, 8)
    )
    eye = np.eye(8, dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["p"]),
        helper.make_node(op, ["p"], ["y"], **attributes),
    ]
    model = _model(nodes, [("x", x)], ["y"], {"w": eye}, opset=20)
    assert _run(device, model, {"x": x}) == ["matmul_tiles"]


def test_inline_exp_and_tanh_are_within_a_few_ulp(device) -> None:
    """``fast_exp`` and ``matmul_tanh`` (inline in the product epilogue, no builtin call)
    against float64: within 4 ulp over float32's range of exp, 0 below -87.33 (where exp is
    under 1.2e-38 anyway, and -inf), infinity above 88.72, NaN kept; tanh within 4 ulp and
    +-1 at the ends."""
    import pyopencl as cl

    from meshgpu.inference.opencl import programs
    from meshgpu.inference.opencl.kernels.elementwise import FAST_EXP_SOURCE
    from meshgpu.inference.opencl.kernels.matmul import MATMUL_SOURCE
    from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE

    source = (
        VECTOR_SOURCE
        + FAST_EXP_SOURCE
        + MATMUL_SOURCE
        + """
    __kernel void probe(__global const float* x, __global float* e, __global float* t) {
      int i = get_global_id(0) * 8;
      store8(e + i, fast_exp(load8(x + i)));
      store8(t + i, matmul_tanh(load8(x + i)));
    }"""
    )
    program = programs.program_for(device, source)
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0, 88.8, -87.4, -1e3, 1e3, 1e-30, -1e-30]
    x = np.concatenate(
        [np.linspace(-90, 90, 40000), np.linspace(-2, 2, 4000), special, [0.0] * 5]
    ).astype(np.float32)
    context = programs.context_for(device)
    queue = cl.CommandQueue(context)
    flags = cl.mem_flags
    x_buffer = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=x)
    e_buffer = cl.Buffer(context, flags.WRITE_ONLY, x.nbytes)
    t_buffer = cl.Buffer(context, flags.WRITE_ONLY, x.nbytes)
    program.probe(queue, (x.size // 8,), None, x_buffer, e_buffer, t_buffer)
    e, t = np.empty_like(x), np.empty_like(x)
    cl.enqueue_copy(queue, e, e_buffer)
    cl.enqueue_copy(queue, t, t_buffer)
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):
        want_e, want_t = np.exp(wide), np.tanh(wide)
    normal = (wide > -86.9) & (wide < 88.72)
    ulp = np.finfo(np.float32).eps
    assert np.all(np.abs(e[normal] - want_e[normal]) <= 4 * ulp * want_e[normal])
    assert np.all(e[(wide < -87.33) | (wide == -np.inf)] == 0.0)
    assert np.all(np.isposinf(e[wide > 88.72]))
    finite = np.isfinite(wide) & (wide != 0)
    assert np.all(np.abs(t[finite] - want_t[finite]) <= 4 * ulp * np.abs(want_t[finite]))
    assert t[x == np.inf][0] == 1.0 and t[x == -np.inf][0] == -1.0
    assert np.isnan(e[np.isnan(x)]).all() and np.isnan(t[np.isnan(x)]).all()
