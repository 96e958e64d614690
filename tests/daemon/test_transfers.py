"""Ranges in flight (transfers.py, peer_ops.py): a pull keeps a window of ranges asked
for while it writes in order, a push sends the first range alone and then a window, a
receiver writes pushed ranges in offset order whatever order it handles them in, and a
range corrupted on its way is caught by the payload's hash and fetched again from the
next holder."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
import trio.testing

from meshgpu.daemon.blobs import BlobWriter, TensorBlob, TensorReceiver, load_tensors
from meshgpu.daemon.dataplane import INPUTS, DataPlane
from meshgpu.daemon.payloads import PayloadStore, encode_tensors
from meshgpu.daemon.transfers import pull, push
from meshgpu.errors import DecodeError, MeshError
from tests.daemon.fakes import data_plane
from tests.daemon.test_client_ops import ops

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes: 10 ranges of 1024 (and a last short one)


class InFlight:
    """Counts the calls in flight and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def during(self, seconds: float) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await trio.sleep(seconds)
        finally:
            self.now -= 1


async def test_pull_keeps_a_window_of_ranges_in_flight_and_writes_them_in_order(
    tmp_path: Path, autojump_clock: Any
) -> None:
    flight = InFlight()
    asked: list[int] = []

    async def call(offset: int, length: int) -> dict[str, Any]:
        asked.append(offset)
        # Later ranges answer sooner: the answers arrive out of order.
        await flight.during(1.0 if offset == 0 else 10.0 - offset / 1024)
        return {"data": PAYLOAD[offset : offset + length], "size": len(PAYLOAD)}

    data, writer = await pull(call, 1000, lambda: BlobWriter(tmp_path, "p"), window=3)
    assert data is None and writer is not None
    assert flight.most == 3
    assert asked[0] == 0 and sorted(asked) == list(range(0, len(PAYLOAD), 1000))
    path = writer.commit(hashlib.sha256(PAYLOAD).hexdigest())
    assert path.read_bytes() == PAYLOAD


async def test_pull_fills_in_a_range_answered_short(tmp_path: Path) -> None:
    async def call(offset: int, length: int) -> dict[str, Any]:
        if offset == 3000:  # one source answers less than asked for, mid-payload
            length = 100
        return {"data": PAYLOAD[offset : offset + length], "size": len(PAYLOAD)}

    _, writer = await pull(call, 1000, lambda: BlobWriter(tmp_path, "p"))
    assert writer is not None
    assert writer.commit(hashlib.sha256(PAYLOAD).hexdigest()).read_bytes() == PAYLOAD


async def test_push_sends_the_first_range_alone_then_a_window(autojump_clock: Any) -> None:
    flight = InFlight()
    sent: list[dict[str, Any]] = []
    first_answered = trio.Event()

    async def put(**fields: Any) -> dict[str, Any]:
        if fields["offset"]:
            assert first_answered.is_set()  # nothing else goes before the first answer
        sent.append(fields)
        await flight.during(5.0)
        if not fields["offset"]:
            first_answered.set()
        return {"stored": True} if not fields["more"] else {"received": 1}

    async def read(offset: int, length: int) -> bytes:
        return PAYLOAD[offset : offset + length]

    answer = await push(put, read, len(PAYLOAD), "sha", 1000, window=4)
    assert answer == {"stored": True}
    assert flight.most == 4
    assert b"".join(bytes(f["data"]) for f in sorted(sent, key=lambda f: f["offset"])) == PAYLOAD
    last = [f for f in sent if not f["more"]]
    assert len(last) == 1 and last[0]["sha256"] == "sha" and last[0]["offset"] == 10000


async def test_push_stops_when_the_receiver_holds_the_payload_already() -> None:
    sent: list[int] = []

    async def put(**fields: Any) -> dict[str, Any]:
        sent.append(fields["offset"])
        return {"stored": True, "held": True}

    async def read(offset: int, length: int) -> bytes:
        return PAYLOAD[offset : offset + length]

    assert (await push(put, read, len(PAYLOAD), "sha", 1000))["held"]
    assert sent == [0]


async def test_push_raises_a_failed_range_as_itself() -> None:
    async def put(**fields: Any) -> dict[str, Any]:
        if fields["offset"] == 3000:
            raise DecodeError("range refused")
        return {"received": 1}

    async def read(offset: int, length: int) -> bytes:
        return PAYLOAD[offset : offset + length]

    with pytest.raises(DecodeError, match="refused"):
        await push(put, read, len(PAYLOAD), "sha", 1000)


def tensor_payload() -> tuple[TensorBlob, bytes, str]:
    blob = TensorBlob({"x": np.arange(40_000, dtype=np.float32)})  # 10 ranges of 16 KiB
    data = b"".join(blob.chunks(1 << 20))
    return blob, data, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("named_by", ["digest", "upload"])
async def test_ranges_handled_out_of_order_are_written_in_order(
    tmp_path: Path, named_by: str
) -> None:
    """Named by its digest on every range, or by an upload id with the digest on the
    last range only (a sender hashing while it sends), alike."""
    _, data, digest = tensor_payload()
    fakes = ops(tmp_path)
    handlers, store = fakes.peer_ops, fakes.payloads
    responder = SimpleNamespace(peer="client")
    ranges = [(at, data[at : at + 40_000]) for at in range(0, len(data), 40_000)]
    assert len(ranges) == 5

    async def put(offset: int, chunk: bytes) -> dict[str, Any]:
        name = {"digest": digest} if named_by == "digest" else {"upload": "up-0123456789"}
        request: dict[str, Any] = {**name, "offset": offset, "data": chunk}
        request["more"] = offset + len(chunk) < len(data)
        if named_by == "upload" and not request["more"]:
            request["sha256"] = digest
        return await handlers.op_put_inputs(request, responder)  # type: ignore[arg-type]

    assert await put(*ranges[0]) == {"received": 40_000}
    answers: dict[int, dict[str, Any]] = {}

    async def put_one(offset: int, chunk: bytes) -> None:
        answers[offset] = await put(offset, chunk)

    async with trio.open_nursery() as nursery:
        for offset, chunk in reversed(ranges[1:]):  # the last one is handled first
            nursery.start_soon(put_one, offset, chunk)
            await trio.sleep(0)
    assert answers[ranges[-1][0]] == {"stored": True, "digest": digest}
    assert store.path(digest, INPUTS).read_bytes() == data
    assert np.array_equal(load_tensors(store.path(digest, INPUTS))["x"], np.arange(40_000))
    assert not list(store.directory.glob("*.tmp"))


async def test_a_range_of_an_upload_started_again_fails_and_leaves_no_scratch_file(
    tmp_path: Path,
) -> None:
    _, data, digest = tensor_payload()
    fakes = ops(tmp_path)
    handlers = fakes.peer_ops
    responder = SimpleNamespace(peer="client")

    async def put(offset: int, more: bool = True) -> dict[str, Any]:
        request = {"digest": digest, "offset": offset, "data": data[offset : offset + 4096]}
        return await handlers.op_put_inputs({**request, "more": more}, responder)  # type: ignore[arg-type]

    await put(0)
    failure: list[Exception] = []

    async def waiting_range() -> None:
        try:
            await put(8192)  # waits for the range at 4096, which never comes
        except DecodeError as error:
            failure.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiting_range)
        await trio.testing.wait_all_tasks_blocked()
        await put(0)  # the sender starts again: the waiting range is given up
    assert failure and "start again at 0" in str(failure[0])
    assert len(list(fakes.payloads.directory.glob("*.tmp"))) == 1  # the new upload's only


@dataclass
class Holders:
    """Serves ``get_inputs`` ranges of one payload from each node; ``corrupt`` nodes
    (``"first"``: the node asked first) flip a byte of one range past the first (a range
    damaged on its way)."""

    payload: bytes
    corrupt: set[str]
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def call(
        self, address: tuple[str, int], op: str, *, timeout: float, **fields: Any
    ) -> dict[str, Any]:
        node = address[0]
        offset, length = fields["offset"], fields["length"]
        self.asked.append((node, offset))
        data = self.payload[offset : offset + length]
        damaged = node in self.corrupt or ("first" in self.corrupt and node == self.asked[0][0])
        if damaged and offset == 2 * length:
            data = bytes([data[0] ^ 1]) + data[1:]
        await trio.sleep(0)
        return {"data": data, "size": len(self.payload)}

    @asynccontextmanager
    async def dedicated(
        self, address: tuple[str, int], *, timeout: float
    ) -> AsyncIterator[Callable[..., Awaitable[dict[str, Any]]]]:
        async def call(op: str, **fields: Any) -> dict[str, Any]:
            return await self.call(address, op, timeout=timeout, **fields)

        yield call


def plane(holders: Holders, directory: Path, live: list[str]) -> tuple[DataPlane, PayloadStore]:
    fakes = data_plane(directory, live=live, max_frame_bytes=4096 * 4)  # 16 KiB ranges
    fakes.plane.peers = holders  # type: ignore[assignment]
    return fakes.plane, fakes.payloads


async def test_a_corrupted_range_is_caught_and_the_inputs_fetched_again(tmp_path: Path) -> None:
    _, data, digest = tensor_payload()
    holders = Holders(data, corrupt={"first"})
    fetching, store = plane(holders, tmp_path, ["w", "a", "b"])
    fetched = await fetching.fetch_inputs(digest, ["a", "b"], durable=True)
    assert fetched.path is not None and fetched.owned
    assert fetched.path.read_bytes() == data
    assert {node for node, _ in holders.asked} == {"a", "b"}  # one copy refused, one taken
    assert len(list(store.directory.glob("*.tmp"))) == 1  # b's, to install; a's is gone


async def test_a_corrupted_range_from_the_only_holder_fails_the_fetch(tmp_path: Path) -> None:
    _, data, digest = tensor_payload()
    fetching, store = plane(Holders(data, corrupt={"a"}), tmp_path, ["w", "a"])
    with pytest.raises(MeshError, match="hashes to") as caught:
        await fetching.fetch_inputs(digest, ["a"], durable=True)
    assert "a:" in str(caught.value)
    assert not list(store.directory.glob("*.tmp"))


@pytest.mark.parametrize("corrupt", [set(), {"first"}])
async def test_a_workers_inputs_arrive_straight_in_their_arrays_checked(
    tmp_path: Path, corrupt: set[str]
) -> None:
    """A worker's read-once copy (``arrays``): no scratch file, the arrays themselves;
    hashed as it arrives, so a damaged copy is refused and fetched from the next holder."""
    _, data, digest = tensor_payload()
    holders = Holders(data, corrupt=corrupt)
    fetching, store = plane(holders, tmp_path, ["w", "a", "b"])
    fetched = await fetching.fetch_inputs(digest, ["a", "b"], durable=False, arrays=True)
    assert fetched.arrays is not None and fetched.path is None
    assert np.array_equal((await fetched.tensors())["x"], np.arange(40_000, dtype=np.float32))
    assert {node for node, _ in holders.asked} == ({"a", "b"} if corrupt else {"a"})
    assert not list(store.directory.iterdir())  # nothing written here
    holders.corrupt = {"a", "b"}
    with pytest.raises(MeshError, match="do not match"):
        await fetching.fetch_inputs(digest, ["a", "b"], durable=False, arrays=True)


def test_a_reserved_file_is_cut_to_what_was_written(tmp_path: Path) -> None:
    writer = BlobWriter(tmp_path, "p", durable=True)
    writer.reserve(1 << 20)  # the sender said 1 MiB; less came
    writer.write(0, PAYLOAD)
    path = writer.commit(hashlib.sha256(PAYLOAD).hexdigest())
    assert path.read_bytes() == PAYLOAD


async def test_a_pull_reserves_the_payloads_size_first(tmp_path: Path) -> None:
    reserved: list[int] = []

    class Recording(BlobWriter):
        def reserve(self, size: int) -> None:
            reserved.append(size)
            super().reserve(size)

    async def call(offset: int, length: int) -> dict[str, Any]:
        return {"data": PAYLOAD[offset : offset + length], "size": len(PAYLOAD)}

    _, writer = await pull(call, 1000, lambda: Recording(tmp_path, "p"))
    assert reserved == [len(PAYLOAD)] and writer is not None
    assert writer.commit(None).stat().st_size == len(PAYLOAD)


RESULT = {
    "b": np.arange(70_000, dtype=np.float32).reshape(100, 700),
    "a": np.array(3, dtype=">i8"),  # big-endian: arrives little-endian
    "c": np.zeros((0, 3), np.uint8),
    "d": np.ones(5, bool),
    "e": np.arange(10, dtype=np.float64)[::2],  # not contiguous
}


@pytest.mark.parametrize("step", [1, 7, 1000, 300_000])
def test_a_result_is_received_straight_into_its_arrays(step: int) -> None:
    """Ranges of any length, headers split across them included."""
    data = b"".join(TensorBlob(RESULT).chunks(1 << 20))
    receiver = TensorReceiver()
    receiver.reserve(len(data))
    for offset in range(0, len(data), step):
        receiver.write(offset, data[offset : offset + step])
    tensors = receiver.tensors()
    assert sorted(tensors) == sorted(RESULT)
    for name, array in RESULT.items():
        assert tensors[name].dtype == array.dtype.newbyteorder("<")
        assert np.array_equal(tensors[name], array)


def receive(data: bytes, announced: int | None = None) -> dict[str, np.ndarray]:
    receiver = TensorReceiver()
    if announced is not None:
        receiver.reserve(announced)
    receiver.write(0, data)
    return receiver.tensors()


def test_a_received_result_that_does_not_add_up_is_refused() -> None:
    data = b"".join(TensorBlob({"x": np.arange(10, dtype=np.int32)}).chunks(1 << 20))
    with pytest.raises(DecodeError, match="after its last tensor"):
        receive(data + b"\x00")
    with pytest.raises(DecodeError, match="ends inside"):
        receive(data[:-1])
    with pytest.raises(DecodeError, match="needs 40 bytes"):
        receive(data, announced=len(data) - 1)  # an array larger than the size announced
    unsorted = msgpack.packb(
        {"b": encode_tensors({"b": np.zeros(1)})["b"], "a": encode_tensors({"a": np.zeros(1)})["a"]}
    )
    with pytest.raises(DecodeError, match="canonical order"):
        receive(unsorted)
    with pytest.raises(DecodeError, match="not a map"):
        receive(msgpack.packb([1, 2]))


async def test_an_abandoned_upload_is_dropped_by_the_sweep_with_its_scratch_file(
    tmp_path: Path,
) -> None:
    """A sender that went away after its first range: no other range ever arrives, and
    the periodic sweep drops the upload and its preallocated scratch file once it has
    not moved for UPLOAD_IDLE_S; a range sent after that is refused."""
    from meshgpu.daemon.peer_ops import UPLOAD_IDLE_S

    _, data, digest = tensor_payload()
    handlers = ops(tmp_path).peer_ops
    store = handlers.payloads
    client = SimpleNamespace(peer="client")
    first = {"digest": digest, "offset": 0, "data": data[:40_000], "more": True}
    await handlers.op_put_inputs({**first, "size": len(data)}, client)  # type: ignore[arg-type]
    assert len(list(store.directory.glob("*.tmp"))) == 1
    assert handlers.drop_stale_uploads(trio.current_time() + UPLOAD_IDLE_S / 2) == 0
    assert handlers.drop_stale_uploads(trio.current_time() + UPLOAD_IDLE_S + 1) == 1
    assert not list(store.directory.glob("*.tmp"))
    with pytest.raises(DecodeError, match="not started"):
        second = {"digest": digest, "offset": 40_000, "data": data[40_000:80_000], "more": True}
        await handlers.op_put_inputs(second, client)  # type: ignore[arg-type]
