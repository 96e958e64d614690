"""Attempts of one task with different bytes (a nondeterministic model) reach the
holders: after a false suspicion two race, and after a leader died with an attempt's
report the task runs again over a result the holders installed. Each holder keeps the
newest attempt it was pushed, whole; an older attempt's push is refused; a reader that
names the attempt ``done`` names gets that attempt's bytes or a newer one's, whole
(core/tasks/result_push.py, ``takes_result`` and ``serves_result``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.core.tasks import TaskId
from meshgpu.daemon.modelstore import ModelStore
from meshgpu.daemon.payloads import PayloadStore, canonical_tensor_bytes
from meshgpu.daemon.peer_ops import PeerOps
from meshgpu.daemon.results import RESULT, task_key
from meshgpu.errors import MeshError, StorageError
from tests.daemon.fakes import FakePeers, data_plane
from tests.daemon.test_client_ops import Responder, Results
from tests.daemon.test_early_results import push_requests as early_push_requests

TASK = TaskId("o", 3)
RANGE = 16 << 10


def attempt_bytes(value: float) -> bytes:
    """An attempt's result: same size, other bytes (a nondeterministic model)."""
    return canonical_tensor_bytes({"y": np.full(25_000, value, dtype=np.float32)})


def push_requests(attempt: int, blob: bytes) -> list[dict[str, Any]]:
    """The put_result ranges of one attempt's push (transfers.push's shape)."""
    return early_push_requests(blob, task=TASK, attempt=attempt, range_bytes=RANGE)


def holder(tmp_path: Path, name: str) -> PeerOps:
    return PeerOps(
        name,
        payloads=PayloadStore(tmp_path / name / "payloads"),
        models=ModelStore(tmp_path / name / "models", 1 << 30),
        results=Results(),
        resolved=lambda task_id: None,
        task_entry=lambda task_id: None,
    )


async def push(ops: PeerOps, requests: list[dict[str, Any]], worker: str) -> None:
    for request in requests:
        await ops.op_put_result(request, Responder(peer=worker))


async def test_two_attempts_racing_to_the_holders_leave_the_newer_ones_bytes(
    tmp_path: Path,
) -> None:
    first, second = attempt_bytes(1.0), attempt_bytes(2.0)
    ones, twos = push_requests(1, first), push_requests(2, second)
    h1, h2 = holder(tmp_path, "h1"), holder(tmp_path, "h2")
    # On h1 the two pushes interleave range by range and attempt 1 ends first; on h2
    # attempt 2 is installed before attempt 1's push starts.
    for one, two in zip(ones[:-1], twos[:-1], strict=True):
        await h1.op_put_result(one, Responder(peer="w1"))
        await h1.op_put_result(two, Responder(peer="w2"))
    assert await h1.op_put_result(ones[-1], Responder(peer="w1")) == {"stored": True}
    assert await h1.op_put_result(twos[-1], Responder(peer="w2")) == {"stored": True}
    await push(h2, twos, "w2")
    with pytest.raises(StorageError, match=r"keeps attempt 2's result .* is older"):
        await push(h2, ones, "w1")  # refused at its first range: nothing written
    key = task_key(TASK)
    assert h1.payloads.get_bytes(key, RESULT) == second
    assert h2.payloads.get_bytes(key, RESULT) == second
    # The record of which attempt each holds survives a restart.
    assert PayloadStore(tmp_path / "h1" / "payloads").result_attempt(key) == 2
    assert PayloadStore(tmp_path / "h2" / "payloads").result_attempt(key) == 2

    # The entry relays a client's ranges of the attempt done names (1), from holders
    # that both keep attempt 2's: the newer attempt's whole bytes, from either.
    async def answer(node: str, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        request = {**fields, "task_id": str(TASK)}
        return await {"h1": h1, "h2": h2}[node].op_get_result(request, Responder())

    entry = data_plane(
        tmp_path / "entry", node_id="e", live=["e", "h1", "h2"], peers=FakePeers(answer)
    )
    entry.plane.max_frame_bytes = 4 * RANGE
    assert await entry.plane.obtain_result(TASK, ("h2", "h1"), attempt=1) == second
    with pytest.raises(MeshError, match="keeps attempt 2's result"):
        await entry.plane.obtain_result(TASK, ("h1",), attempt=3)


async def test_an_attempt_whose_report_was_lost_does_not_fail_the_next(tmp_path: Path) -> None:
    """The leader died with attempt 1's report: its result was installed on the holders,
    the task ran again, and every later attempt was refused by every holder until the
    task failed ("gave up after 4 failed attempts: the result could not be stored")."""
    h1 = holder(tmp_path, "h1")
    await push(h1, push_requests(1, attempt_bytes(1.0)), "w1")
    await push(h1, push_requests(5, attempt_bytes(5.0)), "w5")
    assert h1.payloads.get_bytes(task_key(TASK), RESULT) == attempt_bytes(5.0)
    assert h1.payloads.result_attempt(task_key(TASK)) == 5


def test_another_attempts_install_waits_while_one_is_under_way(tmp_path: Path) -> None:
    """Two installs in flight would leave whichever rename landed last under the record
    of the other; the second is refused until the first is done, and a failed install
    puts the record back as it was."""
    store = PayloadStore(tmp_path / "p")
    key = task_key(TASK)
    with store.claiming_result(key, 2):
        with (
            pytest.raises(StorageError, match="installing attempt 2's result"),
            store.claiming_result(key, 3),
        ):
            pass
        with store.claiming_result(key, 2):  # the same attempt's push again
            pass
    assert store.result_attempt(key) == 2
    with pytest.raises(OSError), store.claiming_result(key, 4):
        raise OSError("disk full")
    assert store.result_attempt(key) == 2
    with store.claiming_result(key, 3):  # nothing under way any more
        pass
    assert store.result_attempt(key) == 3


@pytest.mark.parametrize("large", [False, True])
async def test_a_holders_own_copy_is_not_replaced_by_an_older_attempts(
    tmp_path: Path, large: bool
) -> None:
    """A worker that holds attempt 2's result (it was a holder) and runs attempt 1 (a
    superseded run that still finished) keeps attempt 2's copy: its own copy of attempt
    1 (stored whole, or spilled beside the pushes) is not written over it."""
    fakes = data_plane(tmp_path, node_id="o", live=["o"])
    if large:
        fakes.plane.max_frame_bytes = 4 * RANGE
    second = attempt_bytes(2.0)
    ops = holder(tmp_path, "o")
    ops.payloads = fakes.payloads
    await push(ops, push_requests(2, second), "w2")
    outputs = {"y": np.full(25_000, 1.0, dtype=np.float32)}
    result = await fakes.plane._result_source(TASK, outputs, 1)
    with trio.fail_after(30):
        holders, problems = await fakes.plane._push_result(TASK, 1, result, ["o"])
    assert holders == ()
    assert all("keeps attempt 2's result" in problem for problem in problems)
    assert fakes.payloads.get_bytes(task_key(TASK), RESULT) == second
