"""A large result served to its client while it is stored (early_results.py): ranges
go as they arrive, the last only once this node's copy is installed, a push that fails
takes its client's ranges down with it, and the memory is bounded."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from meshgpu.core.tasks import TaskId
from meshgpu.daemon.early_results import ROOM_WAIT_S, EarlyResultError, EarlyResults
from meshgpu.daemon.modelstore import ModelStore
from meshgpu.daemon.payloads import PayloadStore, canonical_tensor_bytes
from meshgpu.daemon.peer_ops import PeerOps
from meshgpu.daemon.results import RESULT, task_key
from tests.daemon.test_client_ops import Responder, Results

KEY = ("n1", 4)
TASK = TaskId(*KEY)
MIB = 1 << 20


async def test_ranges_go_as_they_arrive_and_the_last_once_the_copy_is_installed() -> None:
    early = EarlyResults(budget_bytes=8 * MIB)
    early.start(KEY, 1, 3 * MIB, 0.0)
    early.add(KEY, 1, 0, b"a" * MIB, 0.0)
    data, size = await early.take(KEY, 0, MIB) or (b"", 0)
    assert bytes(data) == b"a" * MIB and size == 3 * MIB
    assert early.used_bytes == 0  # taken: its memory went with it
    taken: list[bytes] = []

    async def take(offset: int) -> None:
        answer = await early.take(KEY, offset, MIB)
        assert answer is not None
        taken.append(bytes(answer[0][:1]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, MIB)
        nursery.start_soon(take, 2 * MIB)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []  # nothing arrived yet
        early.add(KEY, 1, MIB, b"b" * MIB, 0.0)
        early.add(KEY, 1, 2 * MIB, b"c" * MIB, 0.0)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == [b"b"]  # the last waits for this node's copy
        early.finish(KEY, 1, True, now=0.0)
    assert taken == [b"b", b"c"]
    assert KEY not in early and early.used_bytes == 0  # all taken: gone


async def test_a_push_that_fails_fails_the_ranges_waiting_for_it() -> None:
    early = EarlyResults(budget_bytes=8 * MIB)
    early.start(KEY, 1, 2 * MIB, 0.0)
    early.add(KEY, 1, 0, b"a" * MIB, 0.0)
    early.add(KEY, 1, MIB, b"b" * MIB, 0.0)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def last() -> None:
                with pytest.raises(EarlyResultError, match="digest"):
                    await early.take(KEY, MIB, MIB)

            nursery.start_soon(last)
            await trio.testing.wait_all_tasks_blocked()
            early.finish(KEY, 1, False, "the digest did not match", now=0.0)
    assert early.used_bytes == 0
    with pytest.raises(EarlyResultError):
        await early.take(KEY, 0, MIB)


async def test_a_newer_attempt_drops_the_older_ones_ranges() -> None:
    """Under a flapping membership a task runs again: one early result per task, so the
    memory of the older attempt's ranges goes when the newer push starts."""
    early = EarlyResults(budget_bytes=8 * MIB)
    early.start(KEY, 1, 4 * MIB, 0.0)
    early.add(KEY, 1, 0, b"a" * MIB, 0.0)
    early.add(KEY, 1, MIB, b"a" * MIB, 0.0)
    assert early.used_bytes == 2 * MIB
    assert early.attempt(KEY) == 1
    early.start(KEY, 2, 4 * MIB, 0.0)
    assert early.used_bytes == 0
    assert early.attempt(KEY) == 2  # announced again: the client fetches this one
    early.add(KEY, 1, 2 * MIB, b"a" * MIB, 0.0)  # the older push goes on: not kept
    early.add(KEY, 2, 0, b"b" * MIB, 0.0)
    assert early.used_bytes == MIB
    answer = await early.take(KEY, 0, MIB)
    assert answer is not None and bytes(answer[0][:1]) == b"b"


async def test_ranges_beyond_the_budget_fail_the_early_result_and_free_its_memory() -> None:
    early = EarlyResults(budget_bytes=2 * MIB)
    early.start(KEY, 1, 4 * MIB, 0.0)
    early.add(KEY, 1, 0, b"a" * MIB, 0.0)
    early.add(KEY, 1, MIB, b"a" * MIB, 0.0)
    early.add(KEY, 1, 2 * MIB, b"a" * MIB, 0.0)
    assert early.used_bytes == 0 and early.size(KEY) is None
    with pytest.raises(EarlyResultError, match="budget"):
        await early.take(KEY, 0, MIB)


async def test_an_early_result_nobody_takes_goes_after_keep_s() -> None:
    early = EarlyResults(budget_bytes=8 * MIB, keep_s=30.0)
    early.start(KEY, 1, 2 * MIB, 0.0)
    early.add(KEY, 1, 0, b"a" * MIB, 10.0)
    assert early.sweep(39.0) == 0
    assert early.sweep(41.0) == 1
    assert KEY not in early and early.used_bytes == 0
    assert await early.take(KEY, 0, MIB) is None  # the caller reads the stored copy


def push_requests(
    blob: bytes, *, task: TaskId = TASK, attempt: int = 1, range_bytes: int = MIB
) -> list[dict[str, Any]]:
    """The ``put_result`` requests of one attempt's push of ``blob`` (transfers.push's
    shape)."""
    requests = []
    for offset in range(0, len(blob), range_bytes):
        data = blob[offset : offset + range_bytes]
        more = offset + len(data) < len(blob)
        request: dict[str, Any] = {
            "task_id": str(task),
            "attempt": attempt,
            "offset": offset,
            "data": data,
            "more": more,
            "size": len(blob),
        }
        if not more:
            request["sha256"] = hashlib.sha256(blob).hexdigest()
        requests.append(request)
    return requests


def pushed(size_floats: int) -> tuple[bytes, list[dict[str, Any]]]:
    """A result's bytes and the ``put_result`` requests of a push in 1 MiB ranges."""
    blob = canonical_tensor_bytes({"y": np.arange(size_floats, dtype=np.float32)})
    return blob, push_requests(blob)


def origin_ops(tmp_path: Path) -> tuple[PeerOps, PayloadStore]:
    payloads = PayloadStore(tmp_path / "payloads")
    ops = PeerOps(
        "n1",
        payloads=payloads,
        models=ModelStore(tmp_path / "models", 1 << 30),
        results=Results(),
        resolved=lambda task_id: None,
        task_entry=lambda task_id: None,
        early=EarlyResults(budget_bytes=64 * MIB),
    )
    return ops, payloads


async def fetch_early(ops: PeerOps, size: int, into: list[bytes]) -> None:
    """A client's ranges with ``early``, in order, as transfers.pull asks them."""
    offset = 0
    while offset < size:
        request = {"task_id": str(TaskId(*KEY)), "offset": offset, "length": MIB, "early": True}
        answer = await ops.op_get_result(request, Responder())
        into.append(bytes(answer["data"]))
        offset += len(answer["data"])


async def test_the_origin_answers_a_clients_ranges_as_the_push_brings_them(
    tmp_path: Path,
) -> None:
    """The client has every range before the push ends except the last, which comes
    once the origin's copy checked out and was installed: the bytes a client may
    deliver (once the task is done) are a durable copy's."""
    ops, payloads = origin_ops(tmp_path)
    blob, requests = pushed(3 * MIB // 4 + 1000)
    got: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await ops.op_put_result(requests[0], Responder())  # the push starts
            nursery.start_soon(fetch_early, ops, len(blob), got)
            for request in requests[1:-1]:
                await ops.op_put_result(request, Responder())
            await trio.testing.wait_all_tasks_blocked()
            assert len(got) == len(requests) - 1  # all but the last, before the push ends
            assert not payloads.has(task_key(TaskId(*KEY)), RESULT)
            assert await ops.op_put_result(requests[-1], Responder()) == {"stored": True}
    assert b"".join(got) == blob
    assert payloads.has(task_key(TaskId(*KEY)), RESULT)
    assert ops.early is not None and len(ops.early) == 0 and ops.early.used_bytes == 0


async def test_a_push_whose_copy_does_not_check_out_fails_the_clients_fetch(
    tmp_path: Path,
) -> None:
    """A fetch racing the storing never ends with bytes no holder keeps: the digest of
    the push is wrong, the origin stores nothing, and the client's last range is an
    error (it fetches the result once its task is done, or learns it failed)."""
    ops, payloads = origin_ops(tmp_path)
    blob, requests = pushed(3 * MIB // 4 + 1000)
    requests[-1]["sha256"] = "0" * 64
    got: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await ops.op_put_result(requests[0], Responder())

            async def client() -> None:
                with pytest.raises(EarlyResultError, match="hashes to"):
                    await fetch_early(ops, len(blob), got)

            nursery.start_soon(client)
            for request in requests[1:-1]:
                await ops.op_put_result(request, Responder())
            with pytest.raises(Exception, match="hashes to"):
                await ops.op_put_result(requests[-1], Responder())
    assert len(got) == len(requests) - 1
    assert not payloads.has(task_key(TaskId(*KEY)), RESULT)
    assert ops.early is not None and ops.early.used_bytes == 0


def capped_ops(tmp_path: Path, max_result_bytes: int) -> tuple[PeerOps, EarlyResults]:
    ops, _ = origin_ops(tmp_path)
    early = ops.early = EarlyResults(budget_bytes=64 * MIB, max_result_bytes=max_result_bytes)
    return ops, early


async def test_a_push_no_client_takes_drops_the_early_path_at_its_cap(tmp_path: Path) -> None:
    """No client fetches early (it collects later): once the result's cap is reached its
    early path fails at once, without holding the push back, and its memory goes; the
    push is stored as before."""
    ops, early = capped_ops(tmp_path, 2 * MIB)
    blob, requests = pushed(MIB + MIB // 4)  # five ranges
    peak = 0
    with trio.fail_after(ROOM_WAIT_S - 1):  # no waiting for a client that is not there
        for request in requests:
            await ops.op_put_result(request, Responder())
            peak = max(peak, early.used_bytes)
    assert peak <= 2 * MIB and early.used_bytes == 0
    assert early.size(KEY) is None and early.held_back == 0
    assert ops.payloads.get_bytes(KEY, RESULT) == blob
    with pytest.raises(EarlyResultError, match="no client took"):
        await early.take(KEY, 0, MIB)


async def test_a_push_ahead_of_its_client_waits_for_it_within_the_cap(tmp_path: Path) -> None:
    """A client that takes ranges but lags behind the push holds the push back: the
    result's untaken ranges never pass its cap, and the client gets every byte early."""
    ops, early = capped_ops(tmp_path, 2 * MIB)
    blob, requests = pushed(MIB + MIB // 4)  # five ranges
    got: list[bytes] = []
    peak = 0
    pushed_all = False

    async def lagging_client() -> None:
        """Takes the first range at once, then one more each time the push waits."""
        offset, seen = 0, 0
        while offset < len(blob):
            while offset and early.held_back == seen and not pushed_all:
                await trio.testing.wait_all_tasks_blocked(cushion=0.001)
            seen = early.held_back
            request = {"task_id": str(TaskId(*KEY)), "offset": offset, "length": MIB}
            answer = await ops.op_get_result({**request, "early": True}, Responder())
            got.append(bytes(answer["data"]))
            offset += len(answer["data"])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await ops.op_put_result(requests[0], Responder())  # the push starts
            nursery.start_soon(lagging_client)
            for request in requests[1:]:
                await ops.op_put_result(request, Responder())
                peak = max(peak, early.used_bytes)
            pushed_all = True
    assert b"".join(got) == blob
    assert peak <= 2 * MIB and early.held_back >= 2
    assert early.used_bytes == 0 and early.budget.used_bytes == 0


async def test_a_client_that_stops_taking_drops_the_early_path(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that took a range and then stopped holds the push back ``ROOM_WAIT_S``
    at most: then its early path fails, its ranges' memory goes, and the push ends."""
    ops, early = capped_ops(tmp_path, 2 * MIB)
    blob, requests = pushed(MIB + MIB // 4)
    await ops.op_put_result(requests[0], Responder())
    answer = await ops.op_get_result(
        {"task_id": str(TaskId(*KEY)), "offset": 0, "length": MIB, "early": True}, Responder()
    )
    assert len(answer["data"]) == MIB
    started = trio.current_time()
    for request in requests[1:]:
        await ops.op_put_result(request, Responder())
    assert trio.current_time() - started == pytest.approx(ROOM_WAIT_S)
    assert early.size(KEY) is None and early.used_bytes == 0
    assert ops.payloads.get_bytes(KEY, RESULT) == blob


async def test_a_clients_early_fetch_of_one_attempt_never_gets_anothers_ranges(
    tmp_path: Path,
) -> None:
    """The client fetches attempt 1's result early, naming it; attempt 2's push (another
    run of a nondeterministic model: the same size, other bytes) starts on the origin
    midway. The client's next range is refused (it fetches after ``done`` instead),
    never answered with attempt 2's bytes, which it would assemble with attempt 1's and
    deliver if ``done`` names attempt 1."""
    ops, _ = origin_ops(tmp_path)
    first, ones = pushed(3 * MIB // 4 + 1000)
    second = canonical_tensor_bytes({"y": np.full(3 * MIB // 4 + 1000, 7.0, np.float32)})
    twos = push_requests(second, attempt=2)

    def client_range(offset: int) -> dict[str, Any]:
        task = str(TaskId(*KEY))
        return {"task_id": task, "offset": offset, "length": MIB, "early": True, "attempt": 1}

    with trio.fail_after(10):
        await ops.op_put_result(ones[0], Responder(peer="w1"))
        await ops.op_put_result(ones[1], Responder(peer="w1"))
        answer = await ops.op_get_result(client_range(0), Responder())
        assert bytes(answer["data"]) == first[:MIB]
        await ops.op_put_result(twos[0], Responder(peer="w2"))  # attempt 2's push starts
        await ops.op_put_result(twos[1], Responder(peer="w2"))
        with pytest.raises(EarlyResultError, match="attempt 2"):
            await ops.op_get_result(client_range(MIB), Responder())


async def test_a_range_taken_out_of_order_leaves_the_ranges_before_it() -> None:
    """A client's window of ranges may be asked for in any order: taking a later range
    drops that range only, and the one before it is still answered from memory."""
    early = EarlyResults(budget_bytes=8 * MIB)
    early.start(KEY, 1, 3 * MIB, 0.0)
    for offset, fill in ((0, b"a"), (MIB, b"b"), (2 * MIB, b"c")):
        early.add(KEY, 1, offset, fill * MIB, 0.0)
    early.finish(KEY, 1, True, now=0.0)
    later = await early.take(KEY, MIB, MIB)
    assert later is not None and bytes(later[0][:1]) == b"b"
    last = await early.take(KEY, 2 * MIB, MIB)
    assert last is not None and bytes(last[0][:1]) == b"c"
    assert KEY in early  # the first range is still to be taken
    first = await early.take(KEY, 0, MIB)
    assert first is not None and bytes(first[0][:1]) == b"a"
    assert KEY not in early and early.used_bytes == 0


async def test_ranges_smaller_than_the_pushed_ones_free_what_they_took() -> None:
    """A client whose ranges are smaller than the pushed ones (a smaller frame limit)
    frees the bytes it took, in any order: the push goes on within the node's budget and
    the result's cap, and every range is still answered from memory."""
    early = EarlyResults(budget_bytes=4 * MIB, max_result_bytes=4 * MIB)
    early.start(KEY, 1, 6 * MIB, 0.0)
    for offset, fill in ((0, b"a"), (2 * MIB, b"b")):
        early.add(KEY, 1, offset, fill * (2 * MIB), 0.0)
    half = MIB // 2
    for offset in (MIB, MIB, 0):  # out of order, and one range asked for twice
        taken = await early.take(KEY, offset, MIB)
        assert taken is not None and bytes(taken[0][:1]) == b"a"
    assert early.used_bytes == 2 * MIB  # the first pushed range, taken whole, went
    taken = await early.take(KEY, 2 * MIB + half, half)
    assert taken is not None and bytes(taken[0][:1]) == b"b"
    assert early.used_bytes == 2 * MIB - half
    early.add(KEY, 1, 4 * MIB, b"c" * (2 * MIB), 0.0)  # room for it: not failed
    early.finish(KEY, 1, True, now=0.0)
    for offset in (2 * MIB, 3 * MIB, 4 * MIB, 5 * MIB):
        length = half if offset == 2 * MIB else MIB
        taken = await early.take(KEY, offset, length)
        assert taken is not None and len(taken[0]) == length
    assert KEY not in early and early.used_bytes == 0
