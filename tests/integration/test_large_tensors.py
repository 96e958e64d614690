"""Inputs and results larger than one frame, through real daemons.

The mesh here runs with 1 MiB frames (``max_frame_bytes`` in its config file; the
client's too), so payloads of a few MB take the ranged path on every hop in a second;
one test keeps the real 64 MiB limit with an 82 MB result, the size that was lost."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import trio
from onnx import TensorProto, helper, numpy_helper

from meshgpu.client import AsyncClient
from meshgpu.client.localmesh import LocalMesh, LocalNode
from meshgpu.daemon.blobs import TensorBlob
from meshgpu.errors import MeshError
from tests.integration.conftest import WAIT_S, wait_alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAME = 1 << 20


def wide_model(width: int) -> onnx.ModelProto:
    """x [N, 16] @ W [16, width]: a small input, a result ``width / 16`` times larger."""
    weight = np.random.default_rng(1).standard_normal((16, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def expected_wide(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return x @ numpy_helper.to_array(model.graph.initializer[0])


@pytest.fixture(scope="module")
def small_frames(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    root = tmp_path_factory.mktemp("frames")
    config = root / "mesh.toml"
    config.write_text(f"[daemon]\nmax_frame_bytes = {FRAME}\n")
    mesh = LocalMesh(root, 3, prefix="lt", extra_args=("--config", str(config))).__enter__()
    try:
        trio.run(wait_alive, mesh, 3)
        yield mesh
    finally:
        mesh.close()


def client(mesh: LocalMesh, index: int = 0) -> AsyncClient:
    return AsyncClient(mesh.nodes[index].peer, environ={}, max_frame_bytes=FRAME)


async def rows(client: AsyncClient) -> dict[str, dict]:
    return {row["task_id"]: row for row in await client.tasks()}


async def test_results_larger_than_a_frame_arrive_from_the_entry_node_and_others(
    small_frames: LocalMesh,
) -> None:
    """The entry node as the worker (its own copy, served in ranges) and another worker
    (pushed to the holders in ranges, relayed by the entry node): both delivered whole,
    and marked delivered only then."""
    model = wide_model(256)
    x = np.random.default_rng(2).standard_normal((2000, 16)).astype(np.float32)  # 2 MB out
    entry = small_frames.nodes[0].name
    workers: set[str] = set()
    async with client(small_frames) as mesh_client:
        for _ in range(6):
            handles = [await mesh_client.submit(model, {"x": x}) for _ in range(3)]
            for handle in handles:
                outputs = await handle.result(WAIT_S)
                np.testing.assert_allclose(
                    outputs["y"], expected_wide(model, x), rtol=1e-4, atol=1e-4
                )
                assert handle.worker is not None
                workers.add(handle.worker)
            if entry in workers and workers - {entry}:
                break
        assert entry in workers and workers - {entry}, workers
        with trio.fail_after(WAIT_S):
            while True:  # the acknowledgement reaches the table
                table = await rows(mesh_client)
                if all(table[h.task_id]["delivered"] for h in handles if h.task_id in table):
                    break
                await trio.sleep(0.1)
        row = table.get(handles[0].task_id)
        # Two copies: the task's holders', and the worker's own only when it is not
        # one of two live holders (result_push.keeps_own_copy).
        assert row is None or len(row["result_holders"]) >= 2, row
        assert row is None or {row["worker"], *row["holders"]} >= set(row["result_holders"])


async def test_inputs_larger_than_a_frame_are_uploaded_in_ranges(small_frames: LocalMesh) -> None:
    x = np.random.default_rng(3).standard_normal((1000, 1000)).astype(np.float32)  # 4 MB in
    async with client(small_frames, 1) as mesh_client:
        handle = await mesh_client.submit(relu_model(), {"x": x})
        assert handle.copies >= 1  # journaled on the holders before the answer
        outputs = await handle.result(WAIT_S)
        np.testing.assert_array_equal(outputs["y"], np.maximum(x, 0))
        many = await mesh_client.submit_many(relu_model(), [{"x": x}, {"x": x[:10]}])
        for handle in many:
            assert not isinstance(handle, Exception), handle
        small = await many[1].result(WAIT_S)
        np.testing.assert_array_equal(small["y"], np.maximum(x[:10], 0))


async def test_a_task_group_whose_result_spans_several_ranges(small_frames: LocalMesh) -> None:
    """Four members of 100 KB outputs: a 400 KB group result, pushed in ranges and read
    back whole by the entry node for the members' answers."""
    model = wide_model(256)
    rng = np.random.default_rng(6)
    inputs = [{"x": rng.standard_normal((100, 16)).astype(np.float32)} for _ in range(4)]
    async with client(small_frames, 2) as mesh_client:
        handles = await mesh_client.submit_many(model, inputs, group=4)
        for handle, feeds in zip(handles, inputs, strict=True):
            assert not isinstance(handle, Exception), handle
            outputs = await handle.result(WAIT_S)
            expected = expected_wide(model, feeds["x"])
            np.testing.assert_allclose(outputs["y"], expected, rtol=1e-4, atol=1e-4)


async def test_a_task_group_whose_members_outputs_are_each_larger_than_a_frame(
    small_frames: LocalMesh,
) -> None:
    """Small inputs, large outputs: four members of 2 MiB outputs each (1 MiB frames),
    through ``map`` with ``group`` forced and through ``submit_many``. Every member's
    bytes arrive; nothing is left failed or undelivered."""
    model = wide_model(512)
    rng = np.random.default_rng(8)
    inputs = [{"x": rng.standard_normal((1024, 16)).astype(np.float32)} for _ in range(4)]
    expected = [expected_wide(model, feeds["x"]) for feeds in inputs]
    assert expected[0].nbytes == 2 << 20
    async with client(small_frames, 1) as mesh_client:
        seen: dict[int, np.ndarray] = {}
        with trio.fail_after(WAIT_S):
            async for item in mesh_client.map(model, inputs, window=4, group=4):
                assert item.index not in seen, "delivered twice"
                seen[item.index] = item.outputs["y"]
        assert sorted(seen) == [0, 1, 2, 3]
        for index, outputs in seen.items():
            np.testing.assert_allclose(outputs, expected[index], rtol=1e-4, atol=1e-4)
        handles = await mesh_client.submit_many(model, inputs, group=4)
        for handle, want in zip(handles, expected, strict=True):
            assert not isinstance(handle, Exception), handle
            with trio.fail_after(WAIT_S):
                outputs = await handle.result(WAIT_S)
            np.testing.assert_allclose(outputs["y"], want, rtol=1e-4, atol=1e-4)
        await trio.sleep(1.0)
        for row in (await rows(mesh_client)).values():
            assert row["state"] == "done", row


async def test_a_failed_results_request_does_not_mark_results_collected(
    small_frames: LocalMesh,
) -> None:
    """A ``results`` request the daemon refuses as a whole (a malformed id beside a good
    one) fails both handles in the client, but the good task's result stays in the mesh
    (not delivered) for a later collect."""
    model = wide_model(64)
    x = np.ones((10, 16), np.float32)
    async with client(small_frames) as mesh_client:
        handle = await mesh_client.submit(model, {"x": x}, watch=False)
        task_id = handle.task_id
    async with client(small_frames) as mesh_client:
        with trio.fail_after(WAIT_S):
            while (await rows(mesh_client))[task_id]["state"] != "done":
                await trio.sleep(0.1)
        good, bad = mesh_client.attach(task_id), mesh_client.attach("not a task id")
        for failed in (good, bad):
            with pytest.raises(MeshError):
                await failed.result(WAIT_S)
        await trio.sleep(0.5)  # time for an acknowledgement, had one been sent
        assert not (await rows(mesh_client))[task_id]["delivered"]
    async with client(small_frames) as mesh_client:  # collected later, whole
        outputs = await mesh_client.attach(task_id).result(WAIT_S)
        np.testing.assert_allclose(outputs["y"], expected_wide(model, x), rtol=1e-4, atol=1e-4)


async def test_a_holder_killed_while_the_result_is_pushed_loses_nothing(
    small_frames: LocalMesh,
) -> None:
    """SIGKILL a holder (not the entry node, not the worker) while the worker pushes the
    result to it in ranges: the task still ends done with every byte, from the copies
    that exist, and the worker says which push failed.

    The holder is stopped (SIGSTOP) before the look that decides the kill: a push that
    completed between a look and the kill left no failure to report (the holder answers
    "stored" only after it removed its scratch file, so a scratch file seen while it is
    stopped is a push that cannot succeed). The logs are read once the task is done in
    the table: the worker logs a failed push before it reports the run, where the client
    may have the result earlier (an entry node serves the ranges as they arrive)."""
    model = wide_model(4096)
    x = np.random.default_rng(4).standard_normal((3000, 16)).astype(np.float32)  # 49 MB out
    _entry, *others = small_frames.nodes
    killed: list[str] = []

    def receiving(node: LocalNode) -> bool:
        return bool(list((node.data_dir / "payloads").glob("*.result.*.tmp")))

    async def kill_a_receiving_holder(mesh_client: AsyncClient, task_id: str) -> None:
        while not killed:
            row = (await rows(mesh_client)).get(task_id) or {}
            for node in others:
                if row.get("worker") in (None, node.name) or not receiving(node):
                    continue
                assert node.process is not None
                node.process.send_signal(signal.SIGSTOP)
                if receiving(node):
                    node.kill()
                    killed.append(node.name)
                    return
                node.process.send_signal(signal.SIGCONT)  # its push ended: look again
            await trio.sleep(0.002)

    async def pushed(mesh_client: AsyncClient, task_id: str) -> None:
        """Until the task is done in the table (or collected: done before that)."""
        with trio.fail_after(WAIT_S):
            while (await rows(mesh_client)).get(task_id, {}).get("state") not in (None, "done"):
                await trio.sleep(0.05)

    try:
        async with client(small_frames) as mesh_client:
            for _ in range(8):  # until a holder other than the entry node receives it
                handle = await mesh_client.submit(model, {"x": x})
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(kill_a_receiving_holder, mesh_client, handle.task_id)
                    outputs = await handle.result(WAIT_S * 2)
                    nursery.cancel_scope.cancel()
                expected = expected_wide(model, x)
                np.testing.assert_allclose(outputs["y"], expected, rtol=1e-4, atol=1e-4)
                if killed:
                    await pushed(mesh_client, handle.task_id)
                    break
        assert killed, "no holder but the entry node received a result"
        logs = "".join(node.log.read_text(errors="replace") for node in small_frames.nodes)
        assert f"could not store result of {handle.task_id} on {killed[0]}" in logs
    finally:
        for node in others:
            if not node.running:
                await trio.to_thread.run_sync(small_frames.restart, node)


def test_a_result_over_64_mib_with_the_default_frame_limit(tmp_path: Path) -> None:
    """The case that was lost: 5000 x 16 @ 16 x 4096 float32 is an 82 MB result."""
    model = wide_model(4096)
    x = np.random.default_rng(5).standard_normal((5000, 16)).astype(np.float32)

    async def run(mesh: LocalMesh) -> None:
        await wait_alive(mesh, 3)
        async with AsyncClient(mesh.nodes[1].peer, environ={}) as mesh_client:
            handle = await mesh_client.submit(model, {"x": x})
            outputs = await handle.result(WAIT_S)
        assert outputs["y"].nbytes > 64 << 20
        np.testing.assert_allclose(outputs["y"], expected_wide(model, x), rtol=1e-4, atol=1e-4)

    with LocalMesh(tmp_path, 3, prefix="big") as mesh:
        trio.run(run, mesh)


def test_the_entry_node_killed_after_or_while_it_relays_an_upload_loses_nothing(
    tmp_path: Path,
) -> None:
    """A fresh mesh (every address current): once a submit of relayed inputs is
    acknowledged, the second holder has them on its disk and the entry node's SIGKILL
    loses nothing. Then SIGKILL the next entry node while it relays an upload (both
    write their copy): nothing was acknowledged, the client submits again through the
    node left and gets every byte."""
    x = np.random.default_rng(7).standard_normal((1000, 4000)).astype(np.float32)  # 16 MB
    config = tmp_path / "mesh.toml"
    config.write_text(f"[daemon]\nmax_frame_bytes = {FRAME}\n")

    def receiving(node: LocalNode) -> bool:
        return bool(list((node.data_dir / "payloads").glob("*.inputs.*.tmp")))

    async def run(mesh: LocalMesh) -> None:
        await wait_alive(mesh, 3)
        first = mesh.nodes[0]
        async with client(mesh) as mesh_client:
            handle = await mesh_client.submit(relu_model(), {"x": x}, watch=False)
            row = (await rows(mesh_client))[handle.task_id]
        assert handle.copies == 2 and first.name in row["holders"]
        (holder,) = [node for node in mesh.nodes if node.name in row["holders"] and node != first]
        digest = TensorBlob({"x": x}).digest()
        assert (holder.data_dir / "payloads" / f"{digest}.inputs").exists()  # on its disk
        first.kill()
        async with client(mesh, mesh.nodes.index(holder)) as mesh_client:
            outputs = await mesh_client.attach(handle.task_id).result(WAIT_S * 2)
        np.testing.assert_array_equal(outputs["y"], np.maximum(x, 0))

        entry, other = holder, next(node for node in mesh.nodes if node.running and node != holder)
        killed: list[str] = []

        async def kill_while_relaying() -> None:
            while not (receiving(entry) and receiving(other)):
                await trio.sleep(0.001)
            entry.kill()
            killed.append(entry.name)

        async with AsyncClient(
            entry.peer, environ={}, max_frame_bytes=FRAME, status_interval=0.5
        ) as mesh_client:
            await (await mesh_client.submit(relu_model(), {"x": x[:10]})).result(WAIT_S)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_while_relaying)
                handle = await mesh_client.submit(relu_model(), {"x": x + 1})
                outputs = await handle.result(WAIT_S * 2)
                nursery.cancel_scope.cancel()
            assert killed == [entry.name]
            assert [failover.from_node for failover in mesh_client.failovers] == [entry.name]
        np.testing.assert_array_equal(outputs["y"], np.maximum(x + 1, 0))

    with LocalMesh(tmp_path, 3, prefix="rl", extra_args=("--config", str(config))) as mesh:
        trio.run(run, mesh)
