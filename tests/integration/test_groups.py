"""Task groups through real daemons: many small tasks share one table entry, yet every
member is delivered once with its own output; ungrouped maps still work; a worker
SIGKILLed while it runs a group makes the group run again with nothing lost and no
member delivered twice."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.client import AsyncClient
from meshgpu.client.localmesh import LocalMesh
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.payloads import decode_tensors, encode_tensors
from meshgpu.daemon.rpc import open_rpc
from meshgpu.daemon.synthetic import RUN_LOG_VARIABLE
from tests.integration.conftest import MODELS, WAIT_S, affine_model, wait_alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()


def is_member_id(task_id: str) -> bool:
    head, colon, index = task_id.rpartition(":")
    return bool(colon) and "/" in head and index.isdigit()


async def test_grouped_map_delivers_every_member_once_with_its_own_output(
    mesh: LocalMesh, digits
) -> None:
    pixels, _, expected = digits
    count = 37  # not a multiple of the group size: the last group is short
    async with AsyncClient(mesh.nodes[0].peer, environ={}) as client:
        seen: dict[int, np.ndarray] = {}
        ids: set[str] = set()
        with trio.fail_after(WAIT_S):
            inputs = ({"pixels": pixels[i : i + 1]} for i in range(count))
            async for item in client.map("digits", inputs, window=count, group=8):
                assert item.index not in seen, "delivered twice"
                assert item.task_id is not None and is_member_id(item.task_id), item.task_id
                seen[item.index] = item.outputs["probabilities"][0]
                ids.add(item.task_id)
        assert sorted(seen) == list(range(count))
        assert len(ids) == count
        groups = {task_id.rpartition(":")[0] for task_id in ids}
        assert len(groups) == 5  # 37 = 4 x 8 + 5, one batch, one shape
        for index, probabilities in seen.items():
            np.testing.assert_allclose(probabilities, expected[index], rtol=1e-5, atol=1e-6)
        assert client.duplicates == 0

        # group=1: today's behaviour, plain ids
        plain: dict[int, np.ndarray] = {}
        with trio.fail_after(WAIT_S):
            inputs = ({"pixels": pixels[i : i + 1]} for i in range(10))
            async for item in client.map("digits", inputs, window=10, group=1):
                assert item.task_id is not None and not is_member_id(item.task_id)
                plain[item.index] = item.outputs["probabilities"][0]
        assert sorted(plain) == list(range(10))
        for index, probabilities in plain.items():
            np.testing.assert_allclose(probabilities, expected[index], rtol=1e-5, atol=1e-6)

        # the chosen size (None): still one answer per input, right outputs
        chosen: dict[int, np.ndarray] = {}
        with trio.fail_after(WAIT_S):
            inputs = ({"pixels": pixels[i : i + 1]} for i in range(20))
            async for item in client.map("digits", inputs, window=20):
                chosen[item.index] = item.outputs["probabilities"][0]
        assert sorted(chosen) == list(range(20))
        for index, probabilities in chosen.items():
            np.testing.assert_allclose(probabilities, expected[index], rtol=1e-5, atol=1e-6)


async def test_submit_batch_groups_by_shape_and_answers_members_per_id(
    mesh: LocalMesh, digits
) -> None:
    """A task of another shape starts a group of its own; a malformed task fails alone;
    ``results`` answers member ids; ``collected`` of the group id drops the entry."""
    import onnx

    model = affine_model()
    data = model.SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((1 + (i % 2), 4)).astype(np.float32) for i in range(9)]
    tasks: list = [{"inputs": encode_tensors({"x": row})} for row in rows]
    tasks[4] = {"inputs": {"x": {"dtype": "<f4", "shape": [1, 4], "data": b"short"}}}
    from meshgpu import inference

    local = inference.load(onnx.load_from_string(data), backend="onnxruntime")
    node = mesh.nodes[2]
    async with open_rpc(node.address, Authenticator(None, "client-test")) as rpc:
        await rpc.call("put_model", digest=digest, data=data)
        with trio.fail_after(WAIT_S):
            reply = await rpc.call("submit_batch", model_digest=digest, tasks=tasks, group=3)
        answers = reply["results"]
        assert answers[4]["kind"] == "DecodeError"
        good = {i: a for i, a in enumerate(answers) if i != 4}
        # shapes [1,4] at 0,2,6,8 (4 is malformed) and [2,4] at 1,3,5,7: groups of <= 3
        by_group: dict[str, list[int]] = {}
        for index, answer in good.items():
            assert is_member_id(answer["task_id"]) == ("group" in answer)
            by_group.setdefault(answer.get("group", answer["task_id"]), []).append(index)
        assert sorted(map(sorted, by_group.values())) == [[0, 2, 6], [1, 3, 5], [7], [8]]
        rows_of = {a["task_id"]: i for i, a in good.items()}
        table = {row["task_id"]: row for row in (await rpc.call("tasks"))["tasks"]}
        assert sorted(row["members"] for row in table.values() if row["task_id"] in by_group) == [
            1,
            1,
            3,
            3,
        ]
        outcomes: dict[str, dict] = {}
        with trio.fail_after(WAIT_S):
            async for outcome in rpc.stream("results", task_ids=list(rows_of)):
                if outcome["task_id"] is None:
                    break
                assert outcome["task_id"] not in outcomes
                outcomes[outcome["task_id"]] = outcome
        assert set(outcomes) == set(rows_of)
        for task_id, outcome in outcomes.items():
            assert outcome["state"] == "done", outcome
            got = decode_tensors(outcome["outputs"])["y"]
            want = local.run({"x": rows[rows_of[task_id]]})["y"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # a member id is accepted in `collected`; the group goes once all are named
        group_id = next(g for g, members in by_group.items() if len(members) == 3)
        await rpc.call("collected", task_ids=[f"{group_id}:0", f"{group_id}:1"])
        table = {row["task_id"]: row for row in (await rpc.call("tasks"))["tasks"]}
        assert not table.get(group_id, {}).get("delivered")
        await rpc.call("collected", task_ids=[f"{group_id}:2", *by_group])
        table = {row["task_id"]: row for row in (await rpc.call("tasks"))["tasks"]}
        assert all(table.get(g, {"delivered": True})["delivered"] for g in by_group)


@pytest.fixture
def slow_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalMesh]:
    """Three daemons with a 150 ms synthetic device that log every execution."""
    monkeypatch.setenv(RUN_LOG_VARIABLE, str(tmp_path / "runs.log"))
    mesh = LocalMesh(tmp_path, 3, prefix="grp", extra_args=("--device", "synthetic:150"))
    mesh.__enter__()
    try:
        trio.run(wait_alive, mesh, 3)
        yield mesh
    finally:
        mesh.close()


async def test_worker_killed_while_running_a_group_reruns_it_and_loses_nothing(
    slow_mesh: LocalMesh, tmp_path: Path
) -> None:
    count, size = 24, 4
    entry = slow_mesh.nodes[0]
    async with AsyncClient(entry.peer, environ={}) as client:
        model = affine_model()
        inputs = [np.full((1, 4), float(i), np.float32) for i in range(count)]
        handles = await client.submit_many(
            model, [{"x": x} for x in inputs], replicas=2, group=size
        )
        assert all(not isinstance(h, Exception) for h in handles)
        victim = None
        with trio.fail_after(WAIT_S):
            while victim is None:
                rows = await client.tasks(state="assigned")
                workers = {r["worker"] for r in rows if r["members"] == size} - {entry.name}
                victim = next((n for n in slow_mesh.nodes if n.name in workers), None)
                assert not all(h.done() for h in handles), "no group caught on a worker"
        victim.kill()
        outputs: dict[str, np.ndarray] = {}
        with trio.fail_after(WAIT_S * 2):
            for handle in handles:
                outputs[handle.task_id] = (await handle.result())["x"]  # synthetic: echo
        assert len(outputs) == count
        for index, handle in enumerate(handles):
            np.testing.assert_array_equal(outputs[handle.task_id], inputs[index])
        assert client.duplicates == 0
    runs = (tmp_path / "runs.log").read_text().split()
    executed = {float(value) for value in runs[0::2]}
    assert executed == {float(i) for i in range(count)}  # every member ran at least once
