"""The HTTP part of one in-process daemon: health, the protocol's metadata and infer
(JSON and binary tensors), /mesh resources, /metrics, and hostile requests that get a 4xx
or a closed connection while the node keeps serving."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from meshgpu.daemon import direct as direct_module
from meshgpu.daemon.direct import is_direct_id
from meshgpu.daemon.http_sources import DaemonHttpSources
from meshgpu.daemon.runtime import Daemon
from meshgpu.errors import MeshError, TaskError
from meshgpu.http.app import DeadlineExceeded, FailedForGood, Unavailable
from meshgpu.http.settings import HttpSettings
from tests.daemon.test_runtime import MODELS, settings
from tests.http.test_connections import self_signed_certificate

PIXELS = np.load(MODELS / "digits_test.npz")["pixels"][:4]


def expected(pixels: np.ndarray) -> np.ndarray:
    from meshgpu import inference

    session = inference.load(MODELS / "digits.onnx", backend="onnxruntime")
    return session.run({"pixels": pixels})["probabilities"]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = dataclasses.replace(settings(tmp_path / "solo"), http=HttpSettings(port=0))
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(config).run)
        yield daemon
        daemon.request_stop()


def call(
    daemon: Daemon,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, bytes]:
    assert daemon.http is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http.port}{path}",
        data=body,
        method=method,
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


async def acall(daemon: Daemon, *args: Any, **kwargs: Any) -> tuple[int, Any, bytes]:
    return await trio.to_thread.run_sync(lambda: call(daemon, *args, **kwargs))


async def get_json(daemon: Daemon, path: str) -> tuple[int, Any]:
    status, _, body = await acall(daemon, "GET", path)
    return status, json.loads(body)


def infer_body(pixels: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": list(pixels.shape),
                    "datatype": "FP32",
                    "data": pixels.reshape(-1).tolist(),
                }
            ]
        }
    ).encode()


async def test_health_and_server_metadata(node: Daemon) -> None:
    assert await get_json(node, "/v2/health/live") == (200, {"live": True})
    assert await get_json(node, "/v2/health/ready") == (200, {"ready": True})
    status, meta = await get_json(node, "/v2")
    assert status == 200 and meta["name"] == "meshgpu"
    assert "binary_tensor_data" in meta["extensions"]
    # An extension named is one served: "statistics" was named with no stats endpoint, so
    # tritonclient's get_inference_statistics() met a 404.
    assert "statistics" not in meta["extensions"]
    status, missing = await get_json(node, "/v2/nothing")
    assert status == 404 and "error" in missing


async def test_model_metadata_from_the_onnx_graph(node: Daemon) -> None:
    status, meta = await get_json(node, "/v2/models/digits")
    assert status == 200
    assert meta["platform"] == "onnx_onnxv1" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"][0]["name"] == "probabilities"
    assert (await get_json(node, "/v2/models/digits/ready"))[0] == 200
    status, unknown = await get_json(node, "/v2/models/nope")
    assert status == 404 and "nope" in unknown["error"]


async def test_json_infer_matches_onnxruntime_and_names_the_worker(node: Daemon) -> None:
    status, _, body = await acall(node, "POST", "/v2/models/digits/infer", infer_body(PIXELS))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model_name"] == "digits" and answer["parameters"]["worker"] == "solo"
    (output,) = [o for o in answer["outputs"] if o["name"] == "probabilities"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, expected(PIXELS), rtol=1e-5, atol=1e-6)


async def test_binary_infer_in_and_out(node: Daemon) -> None:
    raw = PIXELS.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": list(PIXELS.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, body = await acall(
        node,
        "POST",
        "/v2/models/digits/infer",
        header + raw,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, body
    length = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:length])
    (output,) = answer["outputs"]
    size = output["parameters"]["binary_data_size"]
    got = np.frombuffer(body[length : length + size], dtype="<f4").reshape(output["shape"])
    np.testing.assert_allclose(got, expected(PIXELS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("large", [True, False])
async def test_infer_decodes_and_encodes_off_the_trio_thread_when_large(
    node: Daemon, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """A large JSON body takes seconds to decode (and its answer to encode): on the trio
    thread the node would answer no probe meanwhile and be suspected by its peers. A
    small one is decoded and encoded there: the hop to a thread costs more."""
    import meshgpu.http.app as app_module

    if large:  # every body and answer counts as large
        monkeypatch.setattr(app_module, "INLINE_CODING_BYTES", 0)

    on_trio_thread: dict[str, bool] = {}

    def watched(name: str, function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                trio.lowlevel.current_trio_token()
                on_trio_thread[name] = True
            except RuntimeError:  # a worker thread
                on_trio_thread[name] = False
            return function(*args, **kwargs)

        return run

    for name in ("parse_request", "encode_response"):
        monkeypatch.setattr(app_module, name, watched(name, getattr(app_module, name)))
    status, _, body = await acall(node, "POST", "/v2/models/digits/infer", infer_body(PIXELS))
    assert status == 200, body
    assert on_trio_thread == {"parse_request": not large, "encode_response": not large}


@pytest.mark.parametrize(
    ("body", "headers", "needle"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b'{"inputs": []}', {}, "non-empty"),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 63], "datatype": "FP32",
                             "data": [0.0] * 63}]}
            ).encode(),
            {},
            "axis 1",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP64",
                             "data": [0.0] * 64}]}
            ).encode(),
            {},
            "input 'pixels' is FP64; model 'digits' takes FP32 [-1, 64]",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "what", "shape": [1, 64], "datatype": "FP32",
                             "data": [0.0] * 64}]}
            ).encode(),
            {},
            "unknown input",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                             "parameters": {"binary_data_size": 1000}}]}
            ).encode() + b"\0" * 256,
            {"Inference-Header-Content-Length": "-"},
            "not a number",
        ),
        (b'{"inputs": 1}', {"Inference-Header-Content-Length": "9999"}, "but the body has"),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "BYTES",
                             "data": ["a"] * 64}]}
            ).encode(),
            {},
            "input 'pixels' is BYTES; model 'digits' takes FP32",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "FP32",
                             "data": ["a", "b"]}]}
            ).encode(),
            {},
            "'data' of FP32 holds numbers",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "BF16",
                             "parameters": {"binary_data_size": 3}}]}
            ).encode(),
            {},
            "binary_data_size is 3 bytes but shape [1, 2] of BF16 needs 4",
        ),
    ],
)  # fmt: skip
async def test_bad_requests_are_400_with_the_reason(
    node: Daemon, body: bytes, headers: dict[str, str], needle: str
) -> None:
    status, _, answer = await acall(node, "POST", "/v2/models/digits/infer", body, headers)
    assert status == 400, answer
    assert needle in json.loads(answer)["error"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (FailedForGood("task t failed: InputError: input 'pixels' holds NaN"), 400),
        (DeadlineExceeded("task t was not done within 300 s; it goes on in the mesh"), 504),
        (Unavailable("task t done, but the result cannot be fetched now"), 503),
        (TaskError("task t failed: DeviceError: the device is gone"), 500),
    ],
)
async def test_a_failed_infer_is_answered_with_the_protocols_code_and_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: MeshError, status: int
) -> None:
    async def failing(self: Any, *args: Any) -> None:
        raise error

    monkeypatch.setattr(DaemonHttpSources, "infer", failing)
    config = dataclasses.replace(settings(tmp_path / "solo"), http=HttpSettings(port=0))
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(config).run)
        answer = await acall(daemon, "POST", "/v2/models/digits/infer", infer_body(PIXELS[:1]))
        daemon.request_stop()
    assert answer[0] == status, answer
    assert json.loads(answer[2]) == {"error": str(error)}


async def test_a_lying_binary_data_size_is_refused(node: Daemon) -> None:
    header = json.dumps(
        {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": 256}}]}
    ).encode()  # fmt: skip
    body = header + b"\0" * 100  # 256 promised, 100 sent
    status, _, answer = await acall(
        node,
        "POST",
        "/v2/models/digits/infer",
        body,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and "past the end" in json.loads(answer)["error"]


def raw_exchange(port: int, data: bytes, wait_s: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


async def test_a_huge_content_length_is_413_before_reading(node: Daemon) -> None:
    assert node.http is not None and node.http.port is not None
    request = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{"
    )
    answer = await trio.to_thread.run_sync(raw_exchange, node.http.port, request)
    assert answer.startswith(b"HTTP/1.1 413")
    assert (await get_json(node, "/v2/health/live"))[0] == 200


async def test_a_slow_client_holds_only_its_own_connection(node: Daemon) -> None:
    assert node.http is not None and node.http.port is not None
    slow = socket.create_connection(("127.0.0.1", node.http.port))
    try:
        slow.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n")
        status, _, body = await acall(node, "POST", "/v2/models/digits/infer", infer_body(PIXELS))
        assert status == 200, body
    finally:
        slow.close()


async def test_mesh_resources_are_the_cli_data(node: Daemon) -> None:
    status, mesh = await get_json(node, "/mesh/status")
    assert status == 200 and mesh["node"]["node_id"] == "solo"
    assert [m["node_id"] for m in mesh["members"]] == ["solo"]
    assert mesh["node"]["http"]["port"] == node.http.port  # type: ignore[union-attr]
    # Force a table run (not direct): a task appears in /mesh/tasks.
    await acall(node, "POST", "/v2/models/digits/infer", infer_body(PIXELS))
    status, tasks = await get_json(node, "/mesh/tasks")
    assert status == 200 and isinstance(tasks["tasks"], list)
    for row in tasks["tasks"]:
        assert (await get_json(node, f"/mesh/tasks/{row['task_id']}"))[1] == row
    assert (await get_json(node, "/mesh/tasks/n-00/1"))[0] == 404
    status, refused = await get_json(node, "/mesh/tasks?state=nothing-like-this")
    assert status == 400 and "nothing-like-this" in refused["error"]
    assert "pending" in refused["error"]
    status, filtered = await get_json(node, "/mesh/tasks?state=failed")
    assert status == 200 and filtered["tasks"] == []


async def test_a_group_member_of_a_node_named_with_a_slash_is_found(tmp_path: Path) -> None:
    """``/mesh/tasks/lab/a/42:1`` (a member id ``map`` hands out) was a 404: the table
    holds one row per group. It is answered with its group's row, named."""
    from meshgpu.client.session import AsyncClient

    named = dataclasses.replace(settings(tmp_path / "lab"), name="lab/a", http=HttpSettings(port=0))
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(named).run)
        async with AsyncClient(f"127.0.0.1:{daemon.address[1]}", environ={}) as client:
            inputs = [{"pixels": PIXELS[:1]}] * 3
            handles = await client.submit_many(MODELS / "digits.onnx", inputs, group=3, replicas=1)
            with trio.fail_after(30):
                await handles[1].result()
        group = handles[1].task_id.rpartition(":")[0]
        assert group.startswith("lab/a/")
        status, row = await get_json(daemon, f"/mesh/tasks/{handles[1].task_id}")
        assert status == 200, row
        assert row["task_id"] == handles[1].task_id and row["group"] == group
        assert row["state"] == "done" and row["members"] == 3
        assert (await get_json(daemon, f"/mesh/tasks/{group}"))[1]["task_id"] == group
        assert (await get_json(daemon, f"/mesh/tasks/{group}:3"))[0] == 404
        daemon.request_stop()


async def test_metrics_parse_with_triton_names(node: Daemon) -> None:
    for _ in range(2):
        assert (await acall(node, "POST", "/v2/models/digits/infer", infer_body(PIXELS)))[0] == 200
    await acall(node, "POST", "/v2/models/digits/infer", b"{bad")
    status, headers, body = await acall(node, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    labels = (("model", "digits"), ("version", "1"))
    assert samples[("nv_inference_request_success_total", labels)] == 2
    assert samples[("nv_inference_count_total", labels)] == 2 * len(PIXELS)
    assert samples[("nv_inference_exec_count_total", labels)] == 2
    assert samples[("nv_inference_request_duration_us_total", labels)] > 0
    assert samples[("nv_inference_pending_request_count", labels)] == 0
    # the bad request, refused before it ran, is a failure as Triton counts one
    failures = {
        reason: samples[
            ("nv_inference_request_failure_total", (*labels[:1], ("reason", reason), *labels[1:]))
        ]
        for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    }
    assert failures == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 1}
    assert samples[("meshgpu_members", (("state", "alive"),))] == 1
    assert ("meshgpu_journal_fsync_seconds_count", ()) in samples
    status, targets = await get_json(node, "/metrics/targets")
    assert targets == [
        {"targets": [f"127.0.0.1:{node.http.port}"], "labels": {"job": "meshgpu"}}  # type: ignore[union-attr]
    ]


async def test_an_unknown_requested_output_is_refused_before_anything_runs(
    node: Daemon,
) -> None:
    """It was answered 400 after the task had run, and counted a successful request."""
    body = json.loads(infer_body(PIXELS[:1]))
    body["outputs"] = [{"name": "probabilities"}, {"name": "logits"}]
    status, _, answer = await acall(
        node, "POST", "/v2/models/digits/infer", json.dumps(body).encode()
    )
    assert status == 400
    error = json.loads(answer)["error"]
    assert error == "unknown output 'logits'; the model's outputs are probabilities"
    _, _, metrics = await acall(node, "GET", "/metrics")
    succeeded = 'nv_inference_request_success_total{model="digits",version="1"} 0.0'
    assert succeeded in metrics.decode()
    failed = 'nv_inference_request_failure_total{model="digits",reason="OTHER",version="1"} 1.0'
    assert failed in metrics.decode()


async def test_repository_index_load_unload(node: Daemon) -> None:
    status, _, body = await acall(node, "POST", "/v2/repository/index", b"{}")
    assert status == 200
    assert json.loads(body) == [
        {"name": "digits", "version": "1", "state": "UNAVAILABLE", "reason": ""}
    ]
    assert (await acall(node, "POST", "/v2/repository/models/digits/load", b""))[0] == 200
    _, _, body = await acall(node, "POST", "/v2/repository/index", b'{"ready": true}')
    assert [row["name"] for row in json.loads(body)] == ["digits"]
    assert (await acall(node, "POST", "/v2/repository/models/digits/unload", b""))[0] == 200
    _, _, body = await acall(node, "POST", "/v2/repository/index", b'{"ready": true}')
    assert json.loads(body) == []
    # A model that ran here is warm, loaded or not (it was UNAVAILABLE until a `load`).
    assert (await acall(node, "POST", "/v2/models/digits/infer", infer_body(PIXELS)))[0] == 200
    _, _, body = await acall(node, "POST", "/v2/repository/index", b'{"ready": true}')
    assert [row["name"] for row in json.loads(body)] == ["digits"]


async def test_tokens_gate_every_request_by_role(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meshgpu.cli import main

    path = tmp_path / "tokens"
    tokens = {}
    for role in ("read", "infer"):
        result = CliRunner().invoke(main, ["http-token", role, "--append", str(path)])
        assert result.exit_code == 0, result.output
        tokens[role] = result.stdout.strip().splitlines()[-1]
    assert tokens["read"] not in path.read_text()  # only hashes are stored
    http = HttpSettings(port=0, bind="127.0.0.1", tokens=path)
    config = dataclasses.replace(settings(tmp_path / "solo"), http=http)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(config).run)
        path_ = "/v2/models/digits/infer"
        assert (await acall(daemon, "GET", "/v2/health/live"))[0] == 401
        wrong = {"Authorization": "Bearer not-a-token"}
        assert (await acall(daemon, "GET", "/v2/health/live", headers=wrong))[0] == 401
        read = {"Authorization": f"Bearer {tokens['read']}"}
        infer = {"Authorization": f"Bearer {tokens['infer']}"}
        assert (await acall(daemon, "GET", "/mesh/status", headers=read))[0] == 200
        status, _, body = await acall(daemon, "POST", path_, infer_body(PIXELS), read)
        assert status == 403 and "infer" in json.loads(body)["error"]
        assert (await acall(daemon, "POST", path_, infer_body(PIXELS), infer))[0] == 200
        load = "/v2/repository/models/digits/load"
        assert (await acall(daemon, "POST", load, b"", infer))[0] == 403
        daemon.request_stop()


def test_an_open_bind_without_tokens_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meshgpu.cli import main

    result = CliRunner().invoke(
        main, ["join", "--http-bind", "0.0.0.0", "--data-dir", str(tmp_path / "d")]
    )
    assert result.exit_code != 0 and "--api-tokens" in result.output


async def test_the_dashboard_is_served_from_the_package_and_streams_state(node: Daemon) -> None:
    status, headers, page = await acall(node, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name in ("dashboard.js", "dashboard.css"):
        assert f"/dashboard/{name}".encode() in page
        assert (await acall(node, "GET", f"/dashboard/{name}"))[0] == 200
    assert b"http://" not in page and b"https://" not in page  # nothing from a CDN
    assert (await acall(node, "GET", "/dashboard/../../etc/passwd"))[0] == 404

    def first_event() -> dict[str, Any]:
        assert node.http is not None
        url = f"http://127.0.0.1:{node.http.port}/dashboard/events"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            lines = []
            while not lines or lines[-1] != b"\n":
                lines.append(response.readline())
        data = b"".join(line[6:] for line in lines if line.startswith(b"data: "))
        return json.loads(data)

    state = await trio.to_thread.run_sync(first_event)
    assert [m["node_id"] for m in state["status"]["members"]] == ["solo"]
    assert [c["name"] for c in state["catalog"]] == ["digits"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_serves_https(tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed_certificate(tmp_path)
    http = HttpSettings(port=0, tls_cert=cert, tls_key=key)
    config = dataclasses.replace(settings(tmp_path / "solo"), http=http)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(config).run)
        assert daemon.http is not None and daemon.http.urls[0].startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))

        def live() -> Any:
            url = f"https://127.0.0.1:{daemon.http.port}/v2/health/live"  # type: ignore[union-attr]
            with urllib.request.urlopen(url, context=context, timeout=30) as response:
                return json.loads(response.read())

        assert await trio.to_thread.run_sync(live) == {"live": True}
        daemon.request_stop()


async def test_concurrent_infer_requests_coalesce_and_each_gets_its_own_answer(
    node: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve requests at once, one with a wrong shape: the good ones are answered each
    with its own row's outputs (some as members of a coalesced group), the bad one alone
    with a 400 naming the input, and the table empties afterwards. (One direct run at a
    time here: past that, concurrent requests go to the table.)"""
    monkeypatch.setattr(direct_module, "DIRECT_WAITING_PER_SLOT", 0)
    pixels = np.load(MODELS / "digits_test.npz")["pixels"][:12]
    want = expected(pixels)
    answers: dict[int, tuple[int, Any]] = {}

    async def one(index: int) -> None:
        rows = np.zeros((1, 63), np.float32) if index == 7 else pixels[index : index + 1]
        status, _, body = await acall(node, "POST", "/v2/models/digits/infer", infer_body(rows))
        answers[index] = (status, json.loads(body))

    await acall(node, "POST", "/v2/models/digits/infer", infer_body(pixels[:1]))  # warm
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for index in range(len(pixels)):
                nursery.start_soon(one, index)
    status, refused = answers.pop(7)
    assert status == 400 and "pixels" in refused["error"]
    for index, (status, answer) in answers.items():
        assert status == 200, answer
        got = np.asarray(answer["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, want[index], rtol=1e-5)
    coalescer = node.handlers.submissions.coalescer
    members = [a for _, a in answers.values() if ":" in str(a["parameters"]["task_id"])]
    assert coalescer.groups >= 1 and len(members) >= 2
    with trio.fail_after(30):
        while len(node.node.tasks.table):
            await trio.sleep(0.1)


async def test_a_few_concurrent_infer_requests_on_an_idle_node_all_run_directly(
    node: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight requests at once on an idle, warm node, every run held until all eight are
    in: each is answered 200 with its own row's outputs from a direct run, and none
    entered the table. (DIRECT_RUN_S is raised so that the rule under test is the count
    of runs in flight, not this machine's speed.)"""
    monkeypatch.setattr(direct_module, "DIRECT_RUN_S", 10.0)
    pixels = np.load(MODELS / "digits_test.npz")["pixels"][:8]
    want = expected(pixels)
    status, _, _ = await acall(node, "POST", "/v2/models/digits/infer", infer_body(pixels[:1]))
    assert status == 200  # warm: the first run of a model goes through the table
    real_run = node.executor.run
    all_in = trio.Event()
    arrived = []

    async def held(*args: Any, **kwargs: Any) -> Any:
        arrived.append(1)
        if len(arrived) == len(pixels):
            all_in.set()
        await all_in.wait()
        return await real_run(*args, **kwargs)

    monkeypatch.setattr(node.executor, "run", held)
    runs_before = node.handlers.submissions.direct.runs
    answers: dict[int, tuple[int, Any]] = {}

    async def one(index: int) -> None:
        body = infer_body(pixels[index : index + 1])
        status, _, answer = await acall(node, "POST", "/v2/models/digits/infer", body)
        answers[index] = (status, json.loads(answer))

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for index in range(len(pixels)):
                nursery.start_soon(one, index)
    for index, (status, answer) in answers.items():
        assert status == 200, answer
        assert is_direct_id(answer["parameters"]["task_id"]), answer["parameters"]
        got = np.asarray(answer["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, want[index], rtol=1e-5)
    assert len({answer["parameters"]["task_id"] for _, answer in answers.values()}) == 8
    assert node.handlers.submissions.direct.runs == runs_before + 8
    assert node.handlers.submissions.coalescer.groups == 0
