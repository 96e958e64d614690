"""Models whose graph outputs are declared without a type or shape (many exporters leave
them out; onnxruntime runs such models) are accepted, run through ``meshgpu run``, the
mesh and HTTP with onnxruntime's results, and described by the protocol's metadata with
the types and shapes shape inference finds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import trio
from click.testing import CliRunner
from onnx import TensorProto, helper

from meshgpu.cli import main
from meshgpu.daemon.runtime import Daemon
from meshgpu.errors import ModelError
from meshgpu.http.models import read_model_info
from meshgpu.http.settings import HttpSettings
from meshgpu.inference.model import load_model
from tests.daemon.test_runtime import settings
from tests.http.test_server import acall, get_json

X = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)


def untyped_model(path: Path) -> Path:
    """``x`` [N, 3] -> ``relu`` (declared with no type at all) and ``negated`` (a float
    tensor with no shape)."""
    untyped = onnx.ValueInfoProto()
    untyped.name = "relu"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["relu"]), helper.make_node("Neg", ["x"], ["negated"])],
        "untyped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [untyped, helper.make_tensor_value_info("negated", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def reference(model: Path) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": X}), strict=True))


def test_load_accepts_untyped_outputs_but_still_refuses_unproduced_ones(tmp_path: Path) -> None:
    model = untyped_model(tmp_path / "untyped.onnx")
    assert load_model(model).outputs == ["relu", "negated"]
    proto = onnx.load(str(model))
    proto.graph.output[0].name = "gone"
    with pytest.raises(ModelError, match="no node produces"):
        load_model(proto)


def test_metadata_describes_untyped_outputs_as_inferred(tmp_path: Path) -> None:
    info = read_model_info(untyped_model(tmp_path / "untyped.onnx"))
    assert info.outputs == [
        {"name": "relu", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "negated", "datatype": "FP32", "shape": [-1, 3]},
    ]


@pytest.mark.parametrize("backend", ["onnxruntime", "opencl"])
def test_run_equals_onnxruntime(tmp_path: Path, backend: str) -> None:
    model = untyped_model(tmp_path / "untyped.onnx")
    np.save(tmp_path / "x.npy", X)
    outcome = CliRunner().invoke(
        main, ["run", str(model), "-i", f"x={tmp_path / 'x.npy'}", "--backend", backend, "--json"]
    )
    assert outcome.exit_code == 0, outcome.output
    outputs = json.loads(outcome.output)["outputs"]
    for name, wanted in reference(model).items():
        np.testing.assert_array_equal(np.asarray(outputs[name]["values"], np.float32), wanted)


async def test_mesh_and_http_equal_onnxruntime(tmp_path: Path) -> None:
    from meshgpu.client.session import AsyncClient

    model = untyped_model(tmp_path / "untyped.onnx")
    wanted = reference(model)
    config = dataclasses.replace(settings(tmp_path / "solo"), http=HttpSettings(port=0))
    async with trio.open_nursery() as nursery:
        node: Daemon = await nursery.start(Daemon(config).run)
        async with AsyncClient(f"127.0.0.1:{node.address[1]}", environ={}) as client:
            handle = await client.submit(model, {"x": X}, replicas=1, direct=False)
            with trio.fail_after(60):
                got = await handle.result()
        for name in wanted:
            np.testing.assert_array_equal(got[name], wanted[name])

        peer = f"127.0.0.1:{node.address[1]}"
        added = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(
                main, ["models", "add", "untyped", str(model), "--peer", peer]
            )
        )
        assert added.exit_code == 0, added.output
        status, meta = await get_json(node, "/v2/models/untyped")  # added when answered
        assert status == 200, meta
        assert [o["shape"] for o in meta["outputs"]] == [[-1, 3], [-1, 3]]
        body = {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": X.ravel().tolist()}
            ]
        }
        status, _, answer = await acall(
            node, "POST", "/v2/models/untyped/infer", json.dumps(body).encode()
        )
        assert status == 200, answer
        for output in json.loads(answer)["outputs"]:
            got_http = np.asarray(output["data"], np.float32).reshape(output["shape"])
            np.testing.assert_array_equal(got_http, wanted[output["name"]])
        node.request_stop()
