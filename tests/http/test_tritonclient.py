"""The real ``tritonclient.http`` against a 3-node loopback mesh of ``meshgpu join``
processes: JSON and binary tensors through every node, outputs equal to onnxruntime's,
and the response naming the node that ran the task."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.daemon.meshprocs import MeshProcess, launch_node, start_node, start_together

tritonclient_http = pytest.importorskip("tritonclient.http")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
PIXELS = np.load(MODELS / "digits_test.npz")["pixels"][:8].astype(np.float32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def start_http_mesh(root: Path, prefix: str) -> list[tuple[MeshProcess, int]]:
    """Three daemons with HTTP ports (the second and third started together, seeded by
    the first), once every one sees all three alive; with their HTTP ports."""
    ports = [free_port() for _ in range(3)]
    first = start_node(root / f"{prefix}0", "--name", f"{prefix}0", "--http-port", str(ports[0]))
    nodes = [(first, ports[0])]
    try:
        seed = ("--peer", f"127.0.0.1:{first.port}")
        others = [
            launch_node(
                root / f"{prefix}{i}", "--name", f"{prefix}{i}", "--http-port", str(p), *seed
            )
            for i, p in enumerate(ports[1:], start=1)
        ]
        nodes += zip(start_together(others), ports[1:], strict=True)
        deadline = time.monotonic() + 60
        for _, port in nodes:
            while True:
                status = get_json(port, "/mesh/status")
                assert isinstance(status, dict)
                if sum(m["state"] == "alive" for m in status["members"]) == 3:
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
    except BaseException:
        for process, _ in nodes:
            process.stop()
        raise
    return nodes


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[MeshProcess, int]]]:
    nodes = start_http_mesh(tmp_path_factory.mktemp("http-mesh"), "h")
    try:
        yield nodes
    finally:
        for process, _ in nodes:
            process.stop()


def expected() -> np.ndarray:
    from meshgpu import inference

    session = inference.load(MODELS / "digits.onnx", backend="onnxruntime")
    return session.run({"pixels": PIXELS})["probabilities"]


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infers_through_every_node(
    mesh: list[tuple[MeshProcess, int]], binary: bool
) -> None:
    reference = expected()
    workers = set()
    for _, port in mesh:
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits")
        metadata = client.get_model_metadata("digits")
        assert metadata["inputs"][0]["shape"] == [-1, 64]
        feed = tritonclient_http.InferInput("pixels", list(PIXELS.shape), "FP32")
        feed.set_data_from_numpy(PIXELS, binary_data=binary)
        wanted = tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary)
        for _ in range(3):
            result = client.infer("digits", [feed], outputs=[wanted])
            np.testing.assert_allclose(
                result.as_numpy("probabilities"), reference, rtol=1e-5, atol=1e-6
            )
            parameters = result.get_response()["parameters"]
            assert parameters["worker"] in {"h0", "h1", "h2"}
            workers.add(parameters["worker"])
        client.close()
    assert workers  # every answer named the node that ran it


def test_tritonclient_errors_are_the_protocols(mesh: list[tuple[MeshProcess, int]]) -> None:
    from tritonclient.utils import InferenceServerException

    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{mesh[1][1]}")
    feed = tritonclient_http.InferInput("pixels", [1, 63], "FP32")
    feed.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="axis 1"):
        client.infer("digits", [feed])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no-such-model")
    assert client.is_server_live()


def test_metrics_targets_follow_the_membership(mesh: list[tuple[MeshProcess, int]]) -> None:
    (group,) = get_json(mesh[2][1], "/metrics/targets")  # type: ignore[misc]
    assert sorted(group["targets"]) == sorted(f"127.0.0.1:{port}" for _, port in mesh)


def small_model(path: Path) -> Path:
    """A model of two inputs of other datatypes: z = x @ w (FP64), n = -k (INT32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(12, dtype=np.float64).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Neg", ["k"], ["n"])],
        "small",
        [
            helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT32, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("z", TensorProto.DOUBLE, ["batch", 3]),
            helper.make_tensor_value_info("n", TensorProto.INT32, ["batch"]),
        ],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def wait_for(port: int, path: str, present: bool) -> None:
    import urllib.error

    deadline = time.monotonic() + 60
    while True:
        try:
            get_json(port, path)
            found = True
        except urllib.error.HTTPError as error:
            assert error.code == 404
            found = False
        if found == present:
            return
        assert time.monotonic() < deadline, (
            f"{path} on {port} still {'absent' if present else 'there'}"
        )
        time.sleep(0.2)


def test_a_model_added_on_one_node_is_inferred_through_another(
    mesh: list[tuple[MeshProcess, int]], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from meshgpu.cli import main

    model = small_model(tmp_path / "small.onnx")
    entry = f"127.0.0.1:{mesh[0][0].port}"
    result = CliRunner().invoke(main, ["models", "add", "small", str(model), "--peer", entry])
    assert result.exit_code == 0, result.output
    assert "version 1" in result.output
    wait_for(mesh[2][1], "/v2/models/small", present=True)
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{mesh[2][1]}")
    metadata = client.get_model_metadata("small")
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP64", "shape": [-1, 4]},
        {"name": "k", "datatype": "INT32", "shape": [-1]},
    ]
    x = np.random.default_rng(1).normal(size=(5, 4))
    k = np.arange(5, dtype=np.int32)
    feeds = [
        tritonclient_http.InferInput("x", [5, 4], "FP64"),
        tritonclient_http.InferInput("k", [5], "INT32"),
    ]
    feeds[0].set_data_from_numpy(x, binary_data=True)
    feeds[1].set_data_from_numpy(k, binary_data=False)
    result = client.infer("small", feeds)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    z, n = session.run(["z", "n"], {"x": x, "k": k})
    np.testing.assert_allclose(result.as_numpy("z"), z, rtol=1e-12)
    np.testing.assert_array_equal(result.as_numpy("n"), n)
    index = client.get_model_repository_index()
    assert {row["name"] for row in index} >= {"digits", "small"}

    listed = CliRunner().invoke(main, ["models", "list", "--json", "--peer", entry])
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["small"]["version"] == 1 and rows["digits"]["shipped"]
    assert rows["small"]["max_batch"] == 8  # a free batch dimension: the default

    flags = ["--max-batch", "4", "--max-delay-ms", "1.5", "--peer", entry]
    tuned = CliRunner().invoke(main, ["models", "add", "small", str(model), *flags])
    assert tuned.exit_code == 0 and "batch <= 4, delay 1.5 ms" in tuned.output, tuned.output
    listed = CliRunner().invoke(main, ["models", "list", "--peer", entry])
    line = next(row for row in listed.output.splitlines() if row.startswith("small "))
    assert "v1" in line and "batch <= 4, delay 1.5 ms" in line  # same bytes: same version

    removed = CliRunner().invoke(main, ["models", "remove", "small", "--peer", entry])
    assert removed.exit_code == 0, removed.output
    wait_for(mesh[1][1], "/v2/models/small", present=False)
    refused = CliRunner().invoke(main, ["models", "remove", "digits", "--peer", entry])
    assert refused.exit_code != 0 and "shipped" in refused.output


def test_metrics_match_the_membership(mesh: list[tuple[MeshProcess, int]]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{mesh[1][1]}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    status = get_json(mesh[1][1], "/mesh/status")
    assert isinstance(status, dict)
    alive = sum(m["state"] == "alive" for m in status["members"])
    assert samples[("meshgpu_members", (("state", "alive"),))] == alive == 3
    assert samples[("meshgpu_datagrams_sent_total", ())] > 0
    assert samples[("meshgpu_datagrams_received_total", ())] > 0
    assert samples[("meshgpu_leader_view", (("leader", status["leader"]),))] == status["view"]


def add_model(mesh: list[tuple[MeshProcess, int]], name: str, model: Path) -> None:
    from click.testing import CliRunner

    from meshgpu.cli import main

    entry = f"127.0.0.1:{mesh[0][0].port}"
    result = CliRunner().invoke(main, ["models", "add", name, str(model), "--peer", entry])
    assert result.exit_code == 0, result.output
    for _, port in mesh:
        wait_for(port, f"/v2/models/{name}", present=True)


@pytest.mark.parametrize("binary", [False, True])
def test_strings_through_tritonclient_equal_onnxruntime(
    mesh: list[tuple[MeshProcess, int]], tmp_path: Path, binary: bool
) -> None:
    from tests.typed_models import reference, string_model

    model = string_model(tmp_path / "strings.onnx")
    add_model(mesh, f"strings-{binary}", model)
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{mesh[2][1]}")
    metadata = client.get_model_metadata(f"strings-{binary}")
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["datatype"] for o in metadata["outputs"]] == ["BYTES", "BYTES", "BOOL"]
    text = np.array(["hi", "", "grüße", "x" * 3000], dtype=object)
    wanted = reference(model, {"text": text})
    feed = tritonclient_http.InferInput("text", [4], "BYTES")
    feed.set_data_from_numpy(text, binary_data=binary)
    outputs = [
        tritonclient_http.InferRequestedOutput(name, binary_data=binary)
        for name in ("shout", "same", "is_hi")
    ]
    result = client.infer(f"strings-{binary}", [feed], outputs=outputs)
    for name in ("shout", "same"):
        # tritonclient gives binary strings as bytes, JSON ones as str
        got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy(name)]
        assert got == wanted[name].tolist()
    np.testing.assert_array_equal(result.as_numpy("is_hi"), wanted["is_hi"])
    assert result.get_response()["parameters"]["worker"] in {"h0", "h1", "h2"}
    client.close()


@pytest.mark.parametrize("binary_output", [False, True])
def test_bfloat16_through_tritonclient_equals_onnxruntime(
    mesh: list[tuple[MeshProcess, int]], tmp_path: Path, binary_output: bool
) -> None:
    import ml_dtypes

    from tests.typed_models import bfloat16_model, reference

    name = f"halves-{binary_output}"
    model = bfloat16_model(tmp_path / "halves.onnx")
    add_model(mesh, name, model)
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{mesh[1][1]}")
    metadata = client.get_model_metadata(name)
    assert metadata["inputs"] == [{"name": "x", "datatype": "BF16", "shape": [-1, 3]}]
    x = (np.arange(-9, 9, dtype=np.float32).reshape(6, 3) / 7).astype(ml_dtypes.bfloat16)
    wanted = reference(model, {"x": x})
    feed = tritonclient_http.InferInput("x", [6, 3], "BF16")
    feed.set_data_from_numpy(x, binary_data=True)  # tritonclient sends BF16 binary only
    outputs = [
        tritonclient_http.InferRequestedOutput(n, binary_data=binary_output) for n in ("y", "wide")
    ]
    result = client.infer(name, [feed], outputs=outputs)
    y = result.as_numpy("y")
    assert y.dtype == ml_dtypes.bfloat16 and y.shape == (6, 3)
    np.testing.assert_array_equal(y.view(np.uint16), wanted["y"].view(np.uint16))
    np.testing.assert_array_equal(result.as_numpy("wide"), wanted["wide"])
    # The same request as JSON: BF16 values as numbers, each one exact in bfloat16.
    body = {
        "inputs": [
            {"name": "x", "shape": [6, 3], "datatype": "BF16",
             "data": x.astype(np.float32).reshape(-1).tolist()}
        ]
    }  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{mesh[1][1]}/v2/models/{name}/infer",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    (y_json,) = [o for o in answer["outputs"] if o["name"] == "y"]
    assert y_json["datatype"] == "BF16"
    assert y_json["data"] == wanted["y"].astype(np.float32).reshape(-1).tolist()
    client.close()


def test_a_datatype_the_model_does_not_declare_is_a_clear_400(
    mesh: list[tuple[MeshProcess, int]],
) -> None:
    from tritonclient.utils import InferenceServerException

    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{mesh[0][1]}")
    feed = tritonclient_http.InferInput("pixels", [1, 64], "FP64")
    feed.set_data_from_numpy(np.zeros((1, 64)), binary_data=True)
    with pytest.raises(InferenceServerException, match="is FP64; model 'digits' takes FP32"):
        client.infer("digits", [feed])
    client.close()


def test_tritonclients_timeout_is_the_tasks_deadline_and_its_passing_a_504_naming_it(
    tmp_path: Path,
) -> None:
    """``infer(timeout=...)`` (microseconds, Triton's schedule-policy parameter) reaches
    the task as its deadline: on a node whose device holds each run for 5 s, a 0.5 s
    timeout is answered 504 with the deadline named, long before the run ends."""
    import dataclasses

    import trio
    from tritonclient.utils import InferenceServerException

    from meshgpu.daemon.runtime import Daemon
    from meshgpu.http.settings import HttpSettings
    from tests.daemon.test_runtime import settings

    raised: list[InferenceServerException] = []

    def infer(port: int) -> float:
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120.0)
        feed = tritonclient_http.InferInput("pixels", [1, 64], "FP32")
        feed.set_data_from_numpy(PIXELS[:1], binary_data=True)
        started = time.monotonic()
        try:
            client.infer("digits", [feed], timeout=500_000)
        except InferenceServerException as error:
            raised.append(error)
        finally:
            client.close()
        return time.monotonic() - started

    async def scenario() -> float:
        slow = dataclasses.replace(
            settings(tmp_path / "solo"), device="synthetic:5000", http=HttpSettings(port=0)
        )
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(Daemon(slow).run)
            assert daemon.http is not None
            port = daemon.http.port
            with trio.fail_after(120):
                took = await trio.to_thread.run_sync(infer, port)
            daemon.request_stop()
        return took

    took = trio.run(scenario)
    (error,) = raised
    assert error.status() == "504", error
    assert "deadline exceeded: not done within 0.5 s" in str(error.message()), error
    assert took < 5.0  # answered at the deadline, not after the 5 s run
