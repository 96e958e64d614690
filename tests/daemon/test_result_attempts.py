"""Attempts of one task with different bytes (a nondeterministic model) reach the
holders: after a false suspicion two race, and after a leader died with an attempt's
report the task runs again over a result the holders installed. Each holder keeps the
newest attempt it was pushed, whole; an older attempt's push is refused; a reader that
names the attempt ``done`` names gets that attempt's bytes or a newer one's, whole
(core/tasks/result_push.py, ``takes_result`` and ``serves_result``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
from meshgpu.errors import MeshError, OtherAttemptKept, RequestFailedError, StorageError
from tests.daemon.fakes import FakePeers, data_plane
from tests.daemon.test_client_ops import Responder
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
    """A node's peer ops over a real data plane's store of results."""
    fakes = data_plane(tmp_path / name, node_id=name, live=[name])
    return PeerOps(
        name,
        payloads=fakes.payloads,
        models=ModelStore(tmp_path / name / "models", 1 << 30),
        results=fakes.plane,
        resolved=lambda task_id: None,
        task_entry=lambda task_id: None,
    )


Answer = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


def wire(nodes: dict[str, PeerOps], before: Answer | None = None) -> Answer:
    """FakePeers' answers from the nodes' ops, as the TCP API gives them: an error is
    the requester's RequestFailedError with the error's answer fields (api.py, rpc.py).
    ``before``: invoked first with each request (a test's doings meanwhile)."""

    async def answer(node: str, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        if before is not None:
            await before(node, op, fields)
        handler = nodes[node].table()[op]
        # Buffers travel as msgpack's bin: a bytearray or a view arrives as bytes.
        fields = {
            name: bytes(value) if isinstance(value, bytearray | memoryview) else value
            for name, value in fields.items()
        }
        try:
            return await handler(fields, Responder(peer="w"))
        except MeshError as error:
            raise RequestFailedError(
                f"{node}: {error}", type(error).__name__, dict(error.answer_fields())
            ) from None

    return answer


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
    entry = data_plane(
        tmp_path / "entry",
        node_id="e",
        live=["e", "h1", "h2"],
        peers=FakePeers(wire({"h1": h1, "h2": h2})),
    )
    entry.plane.max_frame_bytes = 4 * RANGE
    assert await entry.plane.obtain_result(TASK, ("h2", "h1"), attempt=1) == second


async def test_an_attempt_whose_report_was_lost_does_not_fail_the_next(tmp_path: Path) -> None:
    """The leader died with attempt 1's report: its result was installed on the holders,
    the task ran again, and every later attempt was refused by every holder until the
    task failed ("gave up after 4 failed attempts: the result could not be stored")."""
    h1 = holder(tmp_path, "h1")
    await push(h1, push_requests(1, attempt_bytes(1.0)), "w1")
    await push(h1, push_requests(5, attempt_bytes(5.0)), "w5")
    assert h1.payloads.get_bytes(task_key(TASK), RESULT) == attempt_bytes(5.0)
    assert h1.payloads.result_attempt(task_key(TASK)) == 5


def install(store: PayloadStore, attempt: int | None, data: bytes) -> None:
    """Install ``data`` as ``attempt``'s result of TASK, as a push's last range does."""
    scratch = store.scratch(task_key(TASK), RESULT)
    scratch.write_bytes(data)
    with store.claiming_result(task_key(TASK), attempt):
        store.install_result(scratch, task_key(TASK), attempt)


def test_another_attempts_install_waits_while_one_is_under_way(tmp_path: Path) -> None:
    """Two installs in flight would leave whichever rename landed last under the record
    of the other; the second is refused until the first is done, and a failed install
    leaves the record as it was."""
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
        scratch = store.scratch(key, RESULT)
        scratch.write_bytes(attempt_bytes(2.0))
        store.install_result(scratch, key, 2)
    assert store.result_attempt(key) == 2
    with pytest.raises(OSError), store.claiming_result(key, 4):
        raise OSError("disk full")
    assert store.result_attempt(key) == 2
    install(store, 3, attempt_bytes(3.0))  # nothing under way any more
    assert store.result_attempt(key) == 3
    assert PayloadStore(tmp_path / "p").result_attempt(key) == 3


@pytest.mark.parametrize("large", [False, True])
async def test_a_holders_own_copy_is_not_replaced_by_an_older_attempts(
    tmp_path: Path, large: bool
) -> None:
    """A worker that holds attempt 2's result (it was a holder) and runs attempt 1 (a
    superseded run that still finished) keeps attempt 2's copy: its own copy of attempt
    1 (stored whole, or spilled beside the pushes) is not written over it, and the
    attempt reports attempt 2's result, which its holder keeps."""
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
        holders, problems, kept = await fakes.plane._push_result(TASK, 1, result, ["o"])
    # The refused attempt adopts the result kept here: its report names attempt 2.
    assert (holders, kept) == (("o",), 2)
    assert all("keeps attempt 2's result" in problem for problem in problems)
    assert fakes.payloads.get_bytes(task_key(TASK), RESULT) == second


async def holders_keeping(tmp_path: Path, kept: dict[str, float]) -> dict[str, PeerOps]:
    """Holders by name, each keeping the result of the attempt ``kept`` names (its
    bytes: ``attempt_bytes(attempt)``; 0: none)."""
    nodes = {}
    for name, attempt in kept.items():
        nodes[name] = holder(tmp_path, name)
        if attempt:
            await push(nodes[name], push_requests(int(attempt), attempt_bytes(attempt)), "w")
    return nodes


async def test_a_refusal_names_the_kept_attempt_in_its_answer(tmp_path: Path) -> None:
    """Over the TCP API: a refused push and a refused read carry the attempt the holder
    keeps as a field of the error answer (not in its text), and every range answered
    names the attempt whose bytes it holds."""
    from meshgpu.daemon.api import ApiServer
    from meshgpu.daemon.auth import Authenticator
    from meshgpu.daemon.rpc import open_rpc

    h1 = (await holders_keeping(tmp_path, {"h1": 2}))["h1"]
    server = ApiServer(h1.table(), Authenticator(None, "h1"), {})
    async with trio.open_nursery() as nursery:
        tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = tcp[0].socket.getsockname()[1]
        await nursery.start(server.serve_listeners, tcp)
        async with open_rpc(("127.0.0.1", port), Authenticator(None, "w")) as rpc:
            with pytest.raises(RequestFailedError) as refused:
                await rpc.call("put_result", **push_requests(1, attempt_bytes(1.0))[0])
            assert refused.value.kind == "OtherAttemptKept"
            assert refused.value.fields == {"kept_attempt": 2}
            with pytest.raises(RequestFailedError) as older:
                await rpc.call("get_result", task_id=str(TASK), offset=0, length=RANGE, attempt=3)
            assert older.value.fields == {"kept_attempt": 2}
            answer = await rpc.call(
                "get_result", task_id=str(TASK), offset=RANGE, length=RANGE, attempt=1
            )
            assert answer["attempt"] == 2
            assert answer["data"] == attempt_bytes(2.0)[RANGE : 2 * RANGE]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("large", [False, True])
async def test_a_refused_attempt_reports_the_attempt_its_holders_keep(
    tmp_path: Path, large: bool
) -> None:
    """Attempt 1 finishes after attempt 2's result was installed on h1 (h2 has none):
    h1 refuses it naming attempt 2, and the run's report names attempt 2 with h1, the
    node that keeps it, so the task's ``done`` never names an attempt its holders do
    not keep; h2, which took attempt 1's, is no holder of that result."""
    nodes = await holders_keeping(tmp_path, {"h1": 2, "h2": 0})
    worker = data_plane(
        tmp_path / "w", node_id="w", live=["w", "h1", "h2"], peers=FakePeers(wire(nodes))
    )
    if large:
        worker.plane.max_frame_bytes = 4 * RANGE
    outputs = {"y": np.full(25_000, 1.0, dtype=np.float32)}
    result = await worker.plane._result_source(TASK, outputs, 1)
    with trio.fail_after(30):
        holders, _, kept = await worker.plane._push_result(TASK, 1, result, ["h1", "h2"])
    assert (holders, kept) == (("h1",), 2)
    assert "result_attempts_adopted" in worker.counted
    assert nodes["h1"].payloads.get_bytes(task_key(TASK), RESULT) == attempt_bytes(2.0)


async def test_a_read_across_holders_of_different_attempts_is_one_attempts_bytes(
    tmp_path: Path,
) -> None:
    """h1 keeps attempt 2's result, h2 attempt 3's (both whole results of the task);
    h1 stops answering after the first range, so the others come from h2. The entry's
    read sees the second range name attempt 3, starts again for it, and returns attempt
    3's bytes, never a mix of the two."""
    nodes = await holders_keeping(tmp_path, {"h1": 2, "h2": 3})
    answered = {"h1": 0}

    async def h1_dies(node: str, op: str, fields: dict[str, Any]) -> None:
        if node == "h1":
            answered["h1"] += 1
            if answered["h1"] > 1:
                raise OSError("h1 is gone")

    entry = data_plane(
        tmp_path / "e", node_id="e", live=["e", "h1", "h2"], peers=FakePeers(wire(nodes, h1_dies))
    )
    entry.plane.max_frame_bytes = 4 * RANGE
    blob = await entry.plane.obtain_result(TASK, ("h1", "h2"), attempt=2)
    assert blob == attempt_bytes(3.0)


async def test_a_newer_attempt_installed_mid_read_restarts_the_read(tmp_path: Path) -> None:
    """h1 keeps attempt 1's result; after the reader's first range attempt 2's push is
    installed there. The next range names attempt 2: the read starts again and returns
    attempt 2's bytes whole (the entry's read and the client's fetch alike)."""
    from meshgpu.client.outcomes import fetch_result

    async def installing_after_first_read(directory: Path) -> Answer:
        nodes = await holders_keeping(directory, {"h1": 1})
        reads = [0]

        async def install_after_first(node: str, op: str, fields: dict[str, Any]) -> None:
            reads[0] += op == "get_result"
            if reads[0] == 2:
                await push(nodes["h1"], push_requests(2, attempt_bytes(2.0)), "w2")

        return wire(nodes, install_after_first)

    for reader in ("entry", "client"):
        answer = await installing_after_first_read(tmp_path / reader)
        if reader == "entry":
            entry = data_plane(
                tmp_path / reader / "e", node_id="e", live=["e", "h1"], peers=FakePeers(answer)
            )
            entry.plane.max_frame_bytes = 4 * RANGE
            assert await entry.plane.obtain_result(TASK, ("h1",), attempt=1) == attempt_bytes(2.0)
            continue

        class Rpc:  # the client's link to its entry, h1 itself here
            def __init__(self, answer: Answer) -> None:
                self.answer = answer

            async def call(self, op: str, **fields: Any) -> dict[str, Any]:
                fields.pop("relay", None)
                return await self.answer("h1", op, fields)

        size = len(attempt_bytes(1.0))
        outputs = await fetch_result(Rpc(answer), str(TASK), size, RANGE, attempt=1)  # type: ignore[arg-type]
        np.testing.assert_array_equal(outputs["y"], np.full(25_000, 2.0, dtype=np.float32))


async def test_the_result_of_another_attempt_is_read_when_dones_holders_died(
    tmp_path: Path,
) -> None:
    """``done`` names attempt 3, whose only holder h3 died; h1 keeps attempt 2's result,
    a whole result of the task. The read returns it instead of "unavailable": nothing
    accepted is lost (docs/daemon.md, "One attempt's result per holder")."""
    nodes = await holders_keeping(tmp_path, {"h1": 2})
    entry = data_plane(tmp_path / "e", node_id="e", live=["e", "h1"], peers=FakePeers(wire(nodes)))
    entry.plane.max_frame_bytes = 4 * RANGE
    assert await entry.plane.obtain_result(TASK, ("h3", "h1"), attempt=3) == attempt_bytes(2.0)
    small = canonical_tensor_bytes({"y": np.full(3, 2.0, dtype=np.float32)})
    entry.plane.max_frame_bytes = 1 << 20
    nodes["h1"].payloads.delete(task_key(TASK))
    await push(nodes["h1"], [{"task_id": str(TASK), "attempt": 2, "data": small}], "w")
    data, size = await entry.plane.result_head(TASK, ("h3", "h1"), attempt=3)
    assert (data, size) == (small, len(small))


async def test_a_small_results_attempt_survives_a_restart(tmp_path: Path) -> None:
    """A small result kept in the journal, and one of a range kept as a file, keep
    their attempt across a restart: an older attempt's push is still refused, naming the
    attempt kept."""
    from meshgpu.daemon.journal import Journal

    key = task_key(TASK)
    tiny = canonical_tensor_bytes({"y": np.full(3, 2.0, dtype=np.float32)})
    journal = Journal.open(tmp_path / "journal")
    store = PayloadStore(tmp_path / "p", journal)
    store.put_inline(key, RESULT, tiny, 2)
    store.store_small_result(("o", 4), attempt_bytes(5.0), 5)
    journal.sync()
    journal.close()
    store = PayloadStore(tmp_path / "p", Journal.open(tmp_path / "journal"))
    assert store.get_memory(key, RESULT) == tiny
    assert store.read_result_range(key, 0, 1 << 20) == (tiny, len(tiny), 2)
    assert store.result_attempt(("o", 4)) == 5
    with pytest.raises(OtherAttemptKept) as refused:
        store.check_result_attempt(key, 1)
    assert refused.value.kept_attempt == 2
    with pytest.raises(OtherAttemptKept):
        store.check_result_attempt(("o", 4), 4)


def test_a_record_left_by_a_crash_is_settled_at_start(tmp_path: Path) -> None:
    """A crash between an attempt's record and its result's rename: the file there is
    the previous attempt's, and the record's second line says so (the record is
    rewritten to it at the next start); a record with no result beside it (a crash
    before a first install's rename) is deleted at the next start."""
    store = PayloadStore(tmp_path / "p")
    key = task_key(TASK)
    install(store, 1, attempt_bytes(1.0))
    record = store.path(key, "result-attempt")
    inode = store.path(key, RESULT).stat().st_ino
    record.write_text(f"2 {inode + 1}\n1 {inode}\n")  # attempt 2's scratch, never renamed
    orphan = store.path(("o", 9), "result-attempt")
    orphan.write_text("4 12345\n")
    reopened = PayloadStore(tmp_path / "p")
    assert reopened.result_attempt(key) == 1
    assert record.read_text() == f"1 {inode}\n"
    assert not orphan.exists()
    assert reopened.read_result_range(key, 0, 8) == (
        attempt_bytes(1.0)[:8],
        len(attempt_bytes(1.0)),
        1,
    )


def test_a_file_read_as_a_newer_small_result_is_journaled_is_named_by_its_own_attempt(
    tmp_path: Path,
) -> None:
    """A reader thread found no result in the journal and opened the file, attempt 1's;
    meanwhile, on the event loop, attempt 2's smaller result went into the journal. The
    range read from the file is named attempt 1 (its record), not attempt 2: a reader
    pins the attempt a range names, and attempt 2's bytes are not these."""
    from meshgpu.daemon.journal import Journal

    key = task_key(TASK)
    store = PayloadStore(tmp_path / "p", Journal.open(tmp_path / "journal"))
    store.store_small_result(key, attempt_bytes(1.0), 1)
    tiny = canonical_tensor_bytes({"y": np.full(3, 2.0, dtype=np.float32)})
    journaled = store._inline_result

    def looked_before_the_journal_write(task_id: Any) -> Any:
        store._inline_result = journaled  # type: ignore[method-assign]
        store.put_inline(key, RESULT, tiny, 2)  # the event loop, meanwhile
        return None

    store._inline_result = looked_before_the_journal_write  # type: ignore[method-assign]
    data, size, attempt = store.read_result_range(key, 0, 1 << 20)  # type: ignore[misc]
    assert (data, size) == (attempt_bytes(1.0), len(attempt_bytes(1.0)))
    assert attempt == 1
    assert store.result_attempt(key) == 2
    assert store.read_result_range(key, 0, 1 << 20) == (tiny, len(tiny), 2)


async def test_a_refusal_names_only_a_result_whose_install_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result of one range is installed without the directory's fsync (its rename
    rides on the next one); a refusal naming its attempt, which the refused worker
    adopts and reports this node as keeping, syncs the directory first: a crash right
    after the refusal cannot lose the result it said was kept."""
    import meshgpu.daemon.payloads as payloads_module

    synced: list[Path] = []
    real = payloads_module.fsync_directory

    def fsync_directory(directory: Path) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(payloads_module, "fsync_directory", fsync_directory)
    h1 = holder(tmp_path, "h1")
    whole = {"task_id": str(TASK), "data": attempt_bytes(2.0), "attempt": 2}
    await h1.op_put_result(whole, Responder(peer="w"))
    assert synced == []  # stored, its rename not yet synced
    with pytest.raises(OtherAttemptKept):
        await h1.op_put_result({**whole, "attempt": 1}, Responder(peer="w"))
    assert len(synced) == 1
    with pytest.raises(OtherAttemptKept):  # durable already: no second sync
        await h1.op_put_result({**whole, "attempt": 1}, Responder(peer="w"))
    assert len(synced) == 1
    await h1.op_put_result({**whole, "data": attempt_bytes(3.0), "attempt": 3}, Responder())
    with pytest.raises(OtherAttemptKept):  # a push in ranges, refused at its first
        await h1.op_put_result(push_requests(1, attempt_bytes(1.0))[0], Responder(peer="w"))
    assert len(synced) == 2
