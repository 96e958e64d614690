"""A healthy 3-node mesh of real daemons: it forms, 100+ tasks through the Python client
and through `meshgpu submit` equal local onnxruntime, status/tasks render, and bad input
(a malformed model, a wrong shape, a garbage frame) gets a clear error while the mesh
keeps serving."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import trio
from click.testing import CliRunner

from meshgpu.cli import main
from meshgpu.client import AsyncClient, Client
from meshgpu.client.localmesh import LocalMesh
from meshgpu.daemon.auth import MeshKey
from meshgpu.errors import TaskFailedError
from tests.integration.conftest import WAIT_S, affine_model, reference, two_input_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_three_daemons_form_a_mesh_and_agree_on_a_leader(mesh: LocalMesh) -> None:
    names = {node.name for node in mesh.nodes}
    for _ in range(20):
        statuses = []
        for node in mesh.nodes:
            async with AsyncClient(node.peer, environ={}) as client:
                statuses.append(await client.call("wait", alive=3, timeout=WAIT_S))
        for status in statuses:
            alive = {m["node_id"] for m in status["members"] if m["state"] == "alive"}
            assert alive == names
        leaders = {status["leader"] for status in statuses}
        if len(leaders) == 1:
            assert leaders.pop() in names
            return
        async with AsyncClient(mesh.nodes[0].peer, environ={}) as client:
            await client.call("wait", after_generation=statuses[0]["generation"], timeout=WAIT_S)
    raise AssertionError(f"the nodes never agreed on a leader: {leaders}")


def test_100_tasks_through_the_sync_client_equal_onnxruntime(mesh: LocalMesh, digits) -> None:
    pixels, _, expected = digits
    with Client(mesh.nodes[1].peer, environ={}) as client:
        inputs = ({"pixels": pixels[i : i + 1]} for i in range(100))
        seen: dict[int, np.ndarray] = {}
        workers = set()
        for item in client.map("digits", inputs):
            assert item.index not in seen, "delivered twice"
            seen[item.index] = item.outputs["probabilities"]
            workers.add(item.worker)
        assert sorted(seen) == list(range(100))
        for index, probabilities in seen.items():
            np.testing.assert_allclose(probabilities[0], expected[index], rtol=1e-5, atol=1e-6)
        assert workers <= {node.name for node in mesh.nodes}
        handle = client.submit("digits", {"pixels": pixels[:7]}, priority="high")
        batch = handle.result(timeout=WAIT_S)["probabilities"]
        np.testing.assert_allclose(batch, expected[:7], rtol=1e-5, atol=1e-6)


async def test_a_second_model_built_with_onnx_helper(mesh: LocalMesh) -> None:
    model = affine_model()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(20)]
    async with AsyncClient(mesh.nodes[2].peer, environ={}) as client:
        handles = [await client.submit(model, {"x": x}, replicas=3, direct=False) for x in xs]
        assert all(h.copies == 3 for h in handles)
        for x, handle in zip(xs, handles, strict=True):
            outputs = await handle.result(timeout=WAIT_S)
            np.testing.assert_allclose(outputs["y"], reference(model, {"x": x})["y"], rtol=1e-5)


def test_cli_submit_a_directory_and_paired_inputs_equal_onnxruntime(
    mesh: LocalMesh, digits, tmp_path: Path
) -> None:
    pixels, _, expected = digits
    samples = tmp_path / "samples"
    samples.mkdir()
    for index in range(50):
        np.save(samples / f"{index}.npy", pixels[index : index + 1])
    runner = CliRunner()
    outcome = runner.invoke(
        main,
        ["submit", "digits", "--input", f"pixels={samples}", "--output", str(tmp_path / "out"),
         "--peer", mesh.nodes[0].peer, "--json"],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout.strip().splitlines()[-1])
    assert report["done"] == 50 and report["failed"] == 0
    for index in range(50):
        saved = np.load(tmp_path / "out" / f"{index}.npz")["probabilities"]
        np.testing.assert_allclose(saved[0], expected[index], rtol=1e-5, atol=1e-6)

    model_path = tmp_path / "pairs.onnx"
    model_path.write_bytes(two_input_model().SerializeToString())
    rng = np.random.default_rng(2)
    for side in ("left", "right"):
        (tmp_path / side).mkdir()
        for stem in ("p", "q", "r"):
            np.save(tmp_path / side / f"{stem}.npy", rng.standard_normal((1, 3)).astype("f4"))
    outcome = runner.invoke(
        main,
        ["submit", str(model_path), "-i", f"a={tmp_path / 'left'}", "-i",
         f"b={tmp_path / 'right' / '*.npy'}", "-o", str(tmp_path / "pairs"),
         "--peer", mesh.nodes[0].peer],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    for stem in ("p", "q", "r"):
        a, b = (np.load(tmp_path / side / f"{stem}.npy") for side in ("left", "right"))
        np.testing.assert_allclose(np.load(tmp_path / "pairs" / f"{stem}.npz")["product"], a * b)


def test_cli_status_and_tasks(mesh: LocalMesh) -> None:
    runner = CliRunner()
    outcome = runner.invoke(main, ["status", "--peer", mesh.nodes[0].peer, "--json"])
    assert outcome.exit_code == 0, outcome.output
    status = json.loads(outcome.stdout)
    assert {m["node_id"] for m in status["members"]} == {n.name for n in mesh.nodes}
    assert status["leader"] in {n.name for n in mesh.nodes}
    text = runner.invoke(main, ["status", "--peer", mesh.nodes[0].peer])
    assert text.exit_code == 0, text.output
    assert "leader" in text.stdout and all(n.name in text.stdout for n in mesh.nodes)
    rows = runner.invoke(main, ["tasks", "--peer", mesh.nodes[1].peer, "--json"])
    assert rows.exit_code == 0, rows.output
    assert isinstance(json.loads(rows.stdout), list)
    done = runner.invoke(main, ["tasks", "--peer", mesh.nodes[1].peer, "--state", "done"])
    assert done.exit_code == 0, done.output


async def test_bad_model_wrong_shape_and_garbage_frame_get_clear_errors(
    mesh: LocalMesh, digits
) -> None:
    pixels, _, expected = digits
    entry = mesh.nodes[0]
    async with AsyncClient(entry.peer, environ={}) as client:
        broken = await client.submit(b"\x08\x07 this is not a model", {"x": np.zeros(3, "f4")})
        with pytest.raises(TaskFailedError, match=r"ModelError.*not a valid ONNX"):
            await broken.result(timeout=WAIT_S)
        misshapen = await client.submit("digits", {"pixels": pixels[:2, :10]})
        with pytest.raises(TaskFailedError, match=r"InputError.*expected"):
            await misshapen.result(timeout=WAIT_S)

        stream = await trio.open_tcp_stream(*entry.address)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: meshgpu\r\n\r\n")
            reply = b""
            with trio.fail_after(WAIT_S):
                while chunk := await stream.receive_some(65536):
                    reply += chunk
        assert b"limit" in reply  # told why, then disconnected

        fine = await client.submit("digits", {"pixels": pixels[:3]})  # still serving
        outputs = await fine.result(timeout=WAIT_S)
        np.testing.assert_allclose(outputs["probabilities"], expected[:3], rtol=1e-5, atol=1e-6)
        status = await client.status()
        assert status["counters"]["daemon"]["frames_rejected"] >= 1
        assert sum(m["state"] == "alive" for m in status["members"]) == 3


def test_cli_reports_failures_and_unreachable_peers_with_exit_status(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not onnx at all")
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((1, 4), np.float32))
    runner = CliRunner()
    outcome = runner.invoke(
        main,
        ["submit", str(bad_model), "-i", f"x={sample}", "-o", str(tmp_path),
         "--peer", mesh.nodes[1].peer],
    )  # fmt: skip
    assert outcome.exit_code == 1
    assert "ModelError" in outcome.output
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = runner.invoke(main, ["status", "--peer", f"127.0.0.1:{port}"])
    assert nowhere.exit_code == 1
    assert nowhere.output.startswith("Error: no meshgpu daemon answered; tried ")
    assert "meshgpu join" in nowhere.output and "mesh key" not in nowhere.output
    assert len(nowhere.output.strip().splitlines()) == 1
    key_file = tmp_path / "stray.key"
    MeshKey.generate().write(key_file)
    keyed = runner.invoke(
        main, ["status", "--peer", mesh.nodes[1].peer, "--key-file", str(key_file)]
    )
    assert keyed.exit_code == 1
    assert keyed.output.strip().splitlines() == [
        f"Error: the meshgpu daemon at {mesh.nodes[1].peer} runs an open mesh (no key) and "
        f"this client has key {MeshKey.from_file(key_file).fingerprint}: leave out "
        "--key-file and MESHGPU_KEY, or start the daemons with that key"
    ]
