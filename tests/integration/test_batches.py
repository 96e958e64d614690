"""Batched submission through real daemons: one request carries many tasks, a malformed
task fails alone with its reason, and an acknowledged batch survives the SIGKILL of its
entry node (a holder of every task) the moment the acknowledgement arrives."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.client import AsyncClient, AsyncTaskHandle
from meshgpu.client.localmesh import LocalMesh
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.payloads import decode_tensors, encode_tensors
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import MeshError, RequestFailedError, TaskFailedError
from tests.integration.conftest import MODELS, WAIT_S, start_mesh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    """A fresh mesh: the durability test kills a node."""
    started = start_mesh(tmp_path)
    try:
        yield started
    finally:
        started.close()


async def test_submit_batch_answers_each_task_and_a_malformed_one_fails_alone(
    mesh: LocalMesh, digits
) -> None:
    pixels, _, expected = digits
    tasks = [{"inputs": encode_tensors({"pixels": pixels[i : i + 1]})} for i in range(12)]
    tasks[5] = {"inputs": {"pixels": {"dtype": "<f4", "shape": [1, 64], "data": b"short"}}}
    tasks[9] = "not a task"
    node = mesh.nodes[1]
    async with open_rpc(node.address, Authenticator(None, "client-test")) as rpc:
        await rpc.call("put_model", digest=DIGEST, data=MODEL)
        with trio.fail_after(WAIT_S):
            reply = await rpc.call("submit_batch", model_digest=DIGEST, tasks=tasks)
        answers = reply["results"]
        assert len(answers) == len(tasks)
        assert answers[5]["kind"] == "DecodeError" and "needs 256 bytes" in answers[5]["error"]
        assert answers[9]["kind"] == "DecodeError" and "'inputs'" in answers[9]["error"]
        good = {i: a for i, a in enumerate(answers) if i not in (5, 9)}
        assert all(a["copies"] == 2 and a["replicas"] == 2 for a in good.values())
        assert len({a["task_id"] for a in good.values()}) == len(good)
        by_id = {a["task_id"]: i for i, a in good.items()}
        outcomes = {}
        with trio.fail_after(WAIT_S):
            async for outcome in rpc.stream("results", task_ids=list(by_id)):
                if outcome["task_id"] is None:
                    break
                outcomes[outcome["task_id"]] = outcome
        await rpc.call("collected", task_ids=list(outcomes))
    assert set(outcomes) == set(by_id)
    for task_id, outcome in outcomes.items():
        assert outcome["state"] == "done", outcome
        got = decode_tensors(outcome["outputs"])["probabilities"][0]
        np.testing.assert_allclose(got, expected[by_id[task_id]], rtol=1e-5, atol=1e-6)
    with pytest.raises(RequestFailedError, match="at most 1024 tasks"):
        async with open_rpc(node.address, Authenticator(None, "client-test")) as rpc:
            await rpc.call("submit_batch", model_digest=DIGEST, tasks=[{}] * 1025)


async def test_client_batches_run_and_a_task_that_cannot_run_fails_with_its_reason(
    mesh: LocalMesh, digits
) -> None:
    pixels, _, expected = digits
    many = [{"pixels": pixels[i : i + 1]} for i in range(20)]
    many[7] = {"pixels": np.zeros((1, 63), dtype=np.float32)}  # the model wants [N, 64]
    # A dtype no tensor has: refused by the client before sending.
    many[11] = {"pixels": np.array(["2026-12-06"], dtype="datetime64[D]")}
    async with AsyncClient(mesh.nodes[0].peer, environ={}) as client:
        with trio.fail_after(WAIT_S * 2):
            answers = await client.submit_many("digits", many)
            assert len(answers) == len(many)
            assert isinstance(answers[11], MeshError) and "dtype" in str(answers[11])
            for index, answer in enumerate(answers):
                if index == 11:
                    continue
                assert isinstance(answer, AsyncTaskHandle)
                if index == 7:
                    with pytest.raises(TaskFailedError, match="pixels"):
                        await answer.result()
                    continue
                outputs = await answer.result()
                np.testing.assert_allclose(
                    outputs["probabilities"][0], expected[index], rtol=1e-5, atol=1e-6
                )
        # map() batches too, and reports a failed task without stopping the others.
        with trio.fail_after(WAIT_S * 2):
            items = [
                item async for item in client.map("digits", many[:11], window=8, raise_errors=False)
            ]
    assert sorted(item.index for item in items) == list(range(11))
    for item in items:
        if item.index == 7:
            assert isinstance(item.error, TaskFailedError)
        else:
            assert item.error is None
            np.testing.assert_allclose(
                item.outputs["probabilities"][0], expected[item.index], rtol=1e-5, atol=1e-6
            )


async def test_an_acknowledged_batch_survives_sigkill_of_its_entry_node(
    mesh: LocalMesh, digits
) -> None:
    """replicas=2: the acknowledgement means a second node journaled every task. The
    entry node (holder #1 of each) dies at the instant the acks arrive; the client
    fails over and every task still ends with the right answer."""
    pixels, _, expected = digits
    count = 40
    entry = mesh.nodes[0]
    others = [node.peer for node in mesh.nodes[1:]]
    async with AsyncClient([entry.peer, *others], environ={}) as client:
        with trio.fail_after(WAIT_S):
            answers = await client.submit_many(
                "digits", [{"pixels": pixels[i : i + 1]} for i in range(count)], replicas=2
            )
        entry.kill()
        assert all(isinstance(a, AsyncTaskHandle) and a.copies == 2 for a in answers)
        with trio.fail_after(WAIT_S * 2):
            for index, handle in enumerate(answers):
                assert isinstance(handle, AsyncTaskHandle)
                outputs = await handle.result()
                np.testing.assert_allclose(
                    outputs["probabilities"][0], expected[index], rtol=1e-5, atol=1e-6
                )
        assert client.failovers and client.failovers[0].from_node == entry.name
