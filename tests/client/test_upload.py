"""The client's ranged upload of large inputs (client/link.py): hashed while it is sent,
named by an upload id the first time and by its digest once the digest is known."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import numpy as np

from meshgpu.client.link import Link
from meshgpu.daemon.blobs import TensorBlob

RANGE = 16 << 10


class FakeRpc:
    """Answers put_inputs as a node does; ``holds``: digests it has already."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.holds: set[str] = set()
        self.received = bytearray()

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert op == "put_inputs"
        self.calls.append(fields)
        if fields.get("digest") in self.holds and fields["offset"] == 0:
            return {"stored": True, "held": True}
        assert fields["offset"] == len(self.received)  # the fake handles them in order
        self.received += fields["data"]
        if fields["more"]:
            return {"received": len(self.received)}
        digest = hashlib.sha256(self.received).hexdigest()
        assert fields["sha256"] == digest
        self.holds.add(digest)
        return {"stored": True, "digest": digest}


async def test_the_first_upload_is_hashed_as_it_is_sent_and_a_retry_is_named_by_its_digest() -> (
    None
):
    blob = TensorBlob({"x": np.arange(40_000, dtype=np.float32)})
    expected = hashlib.sha256(b"".join(blob.chunks(1 << 20))).hexdigest()
    rpc = FakeRpc()
    link = Link(rpc, SimpleNamespace(), "n1")  # type: ignore[arg-type]
    assert blob.known_digest() is None
    assert await link.upload_inputs(blob, RANGE, replicas=2) == expected
    first = rpc.calls
    assert all("upload" in call and "digest" not in call for call in first)
    assert len({call["upload"] for call in first}) == 1  # one name for the whole upload
    assert [("sha256" in call) for call in first] == [False] * (len(first) - 1) + [True]
    assert bytes(rpc.received) == b"".join(blob.chunks(1 << 20))
    assert blob.known_digest() == expected

    rpc.calls = []
    assert await link.upload_inputs(blob, RANGE, replicas=2) == expected
    assert [(call["digest"], call["offset"]) for call in rpc.calls] == [(expected, 0)]  # held
