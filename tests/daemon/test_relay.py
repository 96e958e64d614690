"""Relayed uploads (relay.py, peer_ops.py): an entry node passes each range of a client's
upload on to the next holder as it writes it; the holder checks and installs its own
copy, the entry node answers the last range once the relay ended, and remembers the
holder for the submit. A relay that fails never fails the upload, and an upload that
fails leaves no installed copy anywhere."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from meshgpu.daemon.dataplane import INPUTS
from meshgpu.daemon.relay import Relays
from meshgpu.daemon.transfers import push
from meshgpu.errors import DigestMismatchError, MeshError
from tests.daemon.test_client_ops import Ops, ops
from tests.daemon.test_transfers import tensor_payload

RANGE = 40_000  # the payload of tensor_payload() is five ranges of this


class Pair:
    """An entry node ``a`` that relays to a holder ``b`` (both PeerOps over real payload
    stores), linked in-process; ``fail_at``: the offset at which ``b``'s link breaks."""

    def __init__(self, tmp_path: Path, fail_at: int | None = None) -> None:
        self.entry: Ops = ops(tmp_path / "a")
        self.holder: Ops = ops(tmp_path / "b")
        self.fail_at = fail_at
        self.relayed: list[int] = []
        self.relays = Relays("a", lambda: ["a", "b"], self.link, lambda: RANGE, lambda _: None)
        self.entry.peer_ops.relays = self.relays

    @asynccontextmanager
    async def link(self, node_id: str) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        assert node_id == "b"

        async def call(op: str, **fields: Any) -> Any:
            assert op == "put_inputs" and "replicas" not in fields  # b relays nothing
            if fields["offset"] == self.fail_at:
                raise MeshError("connection to b lost")
            self.relayed.append(fields["offset"])
            return await self.holder.peer_ops.op_put_inputs(fields, SimpleNamespace(peer="a"))  # type: ignore[arg-type]

        yield call

    async def upload(
        self, data: bytes, digest: str, sha256: str | None = None, *, named_by: str = "digest"
    ) -> dict[str, Any]:
        """A client's ranged upload to ``a`` (a window of ranges in flight), named by its
        digest or (``named_by="upload"``) by an upload id, the digest on its last range."""

        async def read(offset: int, length: int) -> bytes:
            return data[offset : offset + length]

        name = {"digest": digest} if named_by == "digest" else {"upload": "client-upload-1"}

        async def put(**fields: Any) -> Any:
            request = {**fields, **name, "replicas": 2}
            return await self.entry.peer_ops.op_put_inputs(request, SimpleNamespace(peer="client"))  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            self.relays.nursery = nursery
            return await push(put, read, len(data), sha256 or digest, RANGE)


def installed(side: Ops, digest: str) -> bytes | None:
    path = side.payloads.path(digest, INPUTS)
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize("named_by", ["digest", "upload"])
async def test_an_upload_is_relayed_to_the_next_holder_as_it_arrives(
    tmp_path: Path, named_by: str
) -> None:
    _, data, digest = tensor_payload()
    pair = Pair(tmp_path)
    assert await pair.upload(data, digest, named_by=named_by) == {"stored": True, "digest": digest}
    assert pair.relayed == list(range(0, len(data), RANGE))  # every range, once, in order
    assert installed(pair.entry, digest) == data
    assert installed(pair.holder, digest) == data  # checked and installed before the answer
    assert pair.relays.copies_of(digest) == ("b",)
    for side in (pair.entry, pair.holder):
        assert not list(side.payloads.directory.glob("*.tmp"))


async def test_a_holder_that_has_the_inputs_already_takes_no_more_ranges(tmp_path: Path) -> None:
    _, data, digest = tensor_payload()
    pair = Pair(tmp_path)
    pair.holder.payloads.put_bytes(digest, INPUTS, data)
    assert await pair.upload(data, digest) == {"stored": True, "digest": digest}
    assert pair.relayed == [0]  # answered "held" at once
    assert pair.relays.copies_of(digest) == ("b",)
    assert installed(pair.entry, digest) == data


@pytest.mark.parametrize("fail_at", [0, 2 * RANGE, 4 * RANGE])
async def test_a_relay_that_breaks_does_not_fail_the_upload(tmp_path: Path, fail_at: int) -> None:
    _, data, digest = tensor_payload()
    pair = Pair(tmp_path, fail_at=fail_at)
    assert await pair.upload(data, digest) == {"stored": True, "digest": digest}
    assert installed(pair.entry, digest) == data
    assert installed(pair.holder, digest) is None
    assert pair.relays.copies_of(digest) == ()  # the submit asks at random, as before


@pytest.mark.parametrize("named_by", ["digest", "upload"])
async def test_a_corrupted_upload_is_installed_nowhere(tmp_path: Path, named_by: str) -> None:
    _, data, digest = tensor_payload()
    damaged = data[:RANGE] + bytes([data[RANGE] ^ 1]) + data[RANGE + 1 :]
    pair = Pair(tmp_path)
    with pytest.raises(ExceptionGroup) as refused:  # out of the client's nursery
        await pair.upload(damaged, digest, named_by=named_by)
    assert refused.group_contains(DigestMismatchError)
    assert installed(pair.entry, digest) is None
    assert installed(pair.holder, digest) is None
    assert pair.relays.copies_of(digest) == ()


async def test_an_upload_started_again_stops_its_relay_and_relays_afresh(tmp_path: Path) -> None:
    """The client's link broke mid-upload and it starts again at 0: the first relay stops
    (its holder installs nothing of it) and the new upload is relayed whole."""
    _, data, digest = tensor_payload()
    pair = Pair(tmp_path)
    entry = pair.entry.peer_ops
    client = SimpleNamespace(peer="client")
    request = functools.partial(dict, digest=digest, replicas=2, size=len(data))
    async with trio.open_nursery() as nursery:
        pair.relays.nursery = nursery
        for offset in (0, RANGE):
            chunk = data[offset : offset + RANGE]
            await entry.op_put_inputs(request(offset=offset, data=chunk, more=True), client)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert pair.relayed == [0, RANGE]
        assert await pair.upload(data, digest) == {"stored": True, "digest": digest}
    assert pair.relayed[2:] == list(range(0, len(data), RANGE))
    assert installed(pair.holder, digest) == data
    assert pair.relays.copies_of(digest) == ("b",)
    assert not list(pair.holder.payloads.directory.glob("*.tmp"))
