"""Real daemon processes on 127.0.0.1 for the client, CLI and demo integration tests.

One 3-node mesh per test module (starting daemons is the slow part); tests that kill a
node restart it before they end, so the next test finds three again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import trio
from onnx import TensorProto, helper, numpy_helper

from meshgpu.client import AsyncClient
from meshgpu.client.localmesh import LocalMesh

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
WAIT_S = 60.0


def start_mesh(root: Path, count: int = 3) -> LocalMesh:
    mesh = LocalMesh(root, count, prefix="it").__enter__()
    try:
        trio.run(wait_alive, mesh, count)
    except BaseException:
        mesh.close()
        raise
    return mesh


async def wait_alive(mesh: LocalMesh, count: int) -> dict:
    """Every running node sees ``count`` live members (waits on change events)."""
    status: dict = {}
    for node in mesh.nodes:
        if node.running:
            async with AsyncClient(node.peer, environ={}) as client:
                status = await client.call("wait", alive=count, timeout=WAIT_S)
    return status


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    started = start_mesh(tmp_path_factory.mktemp("mesh"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test pixels, labels, and the local onnxruntime probabilities for them."""
    from meshgpu import inference

    data = np.load(MODELS / "digits_test.npz")
    session = inference.load(MODELS / "digits.onnx", backend="onnxruntime")
    return data["pixels"], data["labels"], session.run({"pixels": data["pixels"]})["probabilities"]


def affine_model() -> onnx.ModelProto:
    """relu(x @ W + b), x [N, 4] -> y [N, 3], seeded weights: a second, tiny model."""
    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def two_input_model() -> onnx.ModelProto:
    """a [N, 3] * b [N, 3] -> product: inputs that `meshgpu submit` pairs by file name."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["product"])],
        "pairs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [helper.make_tensor_value_info("product", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from meshgpu import inference

    return inference.load(model, backend="onnxruntime").run(feeds)
