"""Warm inputs (warm_inputs.py): a large upload's arrays, filled as its ranges are
written, are kept once the durable copy checked out and installed, within a budget and
for a while; the worker's run takes them instead of reading the file; nothing half
received, refused or dropped is kept."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from meshgpu.daemon.blobs import TensorBlob, TensorReceiver
from meshgpu.daemon.dataplane import INPUTS
from meshgpu.daemon.warm_inputs import WarmInputs
from meshgpu.errors import DigestMismatchError
from tests.daemon.fakes import data_plane
from tests.daemon.test_client_ops import ops

RANGE = 40_000


def payload() -> tuple[np.ndarray, bytes, str]:
    x = np.arange(40_000, dtype=np.float32)
    data = b"".join(TensorBlob({"x": x}).chunks(1 << 20))
    return x, data, hashlib.sha256(data).hexdigest()


def received(data: bytes) -> TensorReceiver:
    receiver = TensorReceiver()
    receiver.reserve(len(data))
    receiver.write(0, data)
    return receiver


def test_a_kept_copy_is_taken_once_and_counts_against_the_budget() -> None:
    x, data, digest = payload()
    warm = WarmInputs(budget_bytes=len(data) + 10, keep_s=30)
    receiver = warm.receiver(len(data), now=0)
    assert receiver is not None and warm.used_bytes == len(data)
    assert warm.receiver(len(data), now=0) is None  # no room for a second
    receiver.write(0, data)
    assert warm.keep(digest, receiver, now=0)
    arrays = warm.take(digest)
    assert arrays is not None and np.array_equal(arrays["x"], x)
    assert warm.take(digest) is None and warm.used_bytes == 0


def test_copies_expire_are_dropped_and_an_incomplete_one_is_not_kept() -> None:
    _, data, digest = payload()
    warm = WarmInputs(budget_bytes=1 << 30, keep_s=30)
    receiver = warm.receiver(len(data), now=0)
    assert receiver is not None
    receiver.write(0, data[:1000])  # the upload ended early
    assert not warm.keep(digest, receiver, now=0)
    assert warm.used_bytes == 0 and digest not in warm
    for digest_of, now in ((digest, 0.0), ("other", 20.0)):
        kept = warm.receiver(len(data), now=now)
        assert kept is not None
        kept.write(0, data)
        warm.keep(digest_of, kept, now=now)
    assert warm.sweep(now=31) == 1  # the older one
    assert digest not in warm and "other" in warm
    warm.drop("other")
    assert warm.used_bytes == 0 and len(warm) == 0


async def upload(
    peer_ops: Any, data: bytes, digest: str, *, sha256: str | None = None, relayed: bool = False
) -> Any:
    answer: Any = None
    for offset in range(0, len(data), RANGE):
        request: dict[str, Any] = {
            "upload": "up-0123456789",
            "offset": offset,
            "data": data[offset : offset + RANGE],
            "more": offset + RANGE < len(data),
            "size": len(data),
        }
        if not request["more"]:
            request["sha256"] = sha256 or digest
        if relayed:
            request["relayed"] = True
        answer = await peer_ops.op_put_inputs(request, SimpleNamespace(peer="client"))
    return answer


async def test_an_upload_in_ranges_leaves_its_arrays_warm(tmp_path: Path) -> None:
    x, data, digest = payload()
    fakes = ops(tmp_path)
    fakes.peer_ops.warm = warm = WarmInputs(budget_bytes=1 << 30)
    assert await upload(fakes.peer_ops, data, digest) == {"stored": True, "digest": digest}
    assert fakes.payloads.path(digest, INPUTS).read_bytes() == data  # the durable copy
    arrays = warm.take(digest)
    assert arrays is not None and np.array_equal(arrays["x"], x)


async def test_a_relayed_upload_is_stored_but_keeps_no_warm_copy(tmp_path: Path) -> None:
    """A relay's target holds a durable copy; the task runs at the entry node (its origin,
    the scheduler's first holder), which alone keeps the arrays."""
    _, data, digest = payload()
    fakes = ops(tmp_path)
    fakes.peer_ops.warm = warm = WarmInputs(budget_bytes=1 << 30)
    answer = await upload(fakes.peer_ops, data, digest, relayed=True)
    assert answer == {"stored": True, "digest": digest}
    assert fakes.payloads.path(digest, INPUTS).read_bytes() == data
    assert len(warm) == 0 and warm.used_bytes == 0


async def test_an_upload_that_fails_its_digest_keeps_nothing(tmp_path: Path) -> None:
    _, data, digest = payload()
    fakes = ops(tmp_path)
    fakes.peer_ops.warm = warm = WarmInputs(budget_bytes=1 << 30)
    with pytest.raises(DigestMismatchError):
        await upload(fakes.peer_ops, data, digest, sha256="0" * 64)
    assert len(warm) == 0 and warm.used_bytes == 0


async def test_an_upload_started_again_gives_its_first_copy_back(tmp_path: Path) -> None:
    _, data, digest = payload()
    fakes = ops(tmp_path)
    fakes.peer_ops.warm = warm = WarmInputs(budget_bytes=len(data) + 10)
    first = {"upload": "up-0123456789", "offset": 0, "data": data[:RANGE], "more": True}
    await fakes.peer_ops.op_put_inputs({**first, "size": len(data)}, SimpleNamespace(peer="client"))
    assert warm.used_bytes == len(data)
    await upload(fakes.peer_ops, data, digest)  # from 0 again: the budget has room again
    assert digest in warm and warm.used_bytes == len(data)


async def test_a_run_takes_the_warm_copy_instead_of_the_file(tmp_path: Path) -> None:
    x, data, digest = payload()
    plane = data_plane(tmp_path)
    plane.payloads.put_bytes(digest, INPUTS, data)
    kept = plane.plane.warm.receiver(len(data), now=0)
    assert kept is not None
    kept.write(0, data)
    plane.plane.warm.keep(digest, kept, now=0)
    fetched = await plane.plane.fetch_inputs(digest, ["w"], durable=False, arrays=True)
    assert fetched.arrays is not None and np.array_equal(fetched.arrays["x"], x)
    assert plane.counted == ["warm_inputs_taken"]
    again = await plane.plane.fetch_inputs(digest, ["w"], durable=False, arrays=True)
    assert again.path == plane.payloads.path(digest, INPUTS)  # a second run reads the file


async def test_an_upload_whose_warm_copy_finds_no_memory_is_stored_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data, digest = payload()

    def no_memory(*args: Any) -> Any:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr("meshgpu.daemon.blobs.fresh_array", no_memory)
    fakes = ops(tmp_path)
    fakes.peer_ops.warm = warm = WarmInputs(budget_bytes=1 << 30)
    assert await upload(fakes.peer_ops, data, digest) == {"stored": True, "digest": digest}
    assert fakes.payloads.path(digest, INPUTS).read_bytes() == data
    assert len(warm) == 0 and warm.used_bytes == 0
