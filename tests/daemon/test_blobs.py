"""Large payloads: the streamed canonical bytes equal the whole ones, layouts are read
from headers and checked, and ranged transfers refuse what does not add up."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from meshgpu.client.batches import prepare_inputs, resolve_max_task_bytes
from meshgpu.daemon.blobs import (
    BlobWriter,
    DirectWriter,
    TensorBlob,
    load_tensors,
    read_layout,
)
from meshgpu.daemon.payloads import canonical_tensor_bytes, encode_tensors
from meshgpu.daemon.transfers import pull, push
from meshgpu.errors import ClientError, ConfigError, DecodeError, DigestMismatchError

TENSORS = {
    "weights": np.arange(70_000, dtype=np.float32).reshape(100, 700),
    "scalar": np.array(3, dtype=">i8"),  # big-endian: sent little-endian
    "empty": np.zeros((0, 3), np.uint8),
    "mask": np.ones(5, bool),
    "strided": np.arange(10, dtype=np.float64)[::2],  # not contiguous
}


def mixed_tensors() -> dict[str, np.ndarray]:
    """Strings and bfloat16 beside numbers: their payload bytes are not their memory."""
    import ml_dtypes

    return {
        **TENSORS,
        "text": np.array([["é" * 40, ""], ["b", "cd"]] * 50, dtype=object),
        "half": np.arange(-60, 60, dtype=np.float32).astype(ml_dtypes.bfloat16),
    }


def assert_same(got: dict[str, np.ndarray], wanted: dict[str, np.ndarray]) -> None:
    assert got.keys() == wanted.keys()
    for name, array in wanted.items():
        assert got[name].dtype == array.dtype.newbyteorder("=") or got[name].dtype == array.dtype
        assert got[name].shape == array.shape
        assert got[name].tolist() == array.tolist()


def test_strings_and_bfloat16_stream_read_back_and_are_received(tmp_path: Path) -> None:
    from meshgpu.daemon.blobs import TensorReceiver
    from meshgpu.daemon.payloads import tensors_from_bytes

    tensors = mixed_tensors()
    blob = TensorBlob(tensors)
    whole = canonical_tensor_bytes(tensors)
    assert b"".join(blob.chunks(999)) == whole and blob.size == len(whole)
    assert_same(tensors_from_bytes(whole), tensors)
    path = tmp_path / "inputs"
    blob.write_to(path)
    assert_same(load_tensors(path), tensors)
    receiver = TensorReceiver()
    receiver.reserve(len(whole))
    offset = 0
    for chunk in blob.chunks(777):  # headers and strings split across ranges
        receiver.write(offset, chunk)
        offset += len(chunk)
    assert_same(receiver.tensors(), tensors)


def test_streamed_bytes_equal_the_canonical_bytes_and_digest() -> None:
    blob = TensorBlob(TENSORS)
    whole = canonical_tensor_bytes(TENSORS)
    assert blob.size == len(whole)
    assert b"".join(blob.chunks(1000)) == whole
    assert blob.digest() == hashlib.sha256(whole).hexdigest()
    for offset, length in [(0, 1), (27, 5000), (len(whole) - 3, 10), (len(whole), 4)]:
        assert blob.read(offset, length) == whole[offset : offset + length]
        assert blob.view(offset, length) == whole[offset : offset + length]


def test_a_range_inside_one_array_is_a_view_and_one_across_a_header_is_copied() -> None:
    array = np.arange(4096, dtype=np.float32)
    blob = TensorBlob({"x": array})
    whole = canonical_tensor_bytes({"x": array})
    header = blob.size - array.nbytes
    inside = blob.range_view(header + 8, 1000)
    assert isinstance(inside, memoryview) and inside == whole[header + 8 : header + 1008]
    inside_array = np.frombuffer(inside, np.uint8)
    assert np.shares_memory(inside_array, array)  # sent from the array's memory, no copy
    assert blob.range_view(0, 1000) is None  # the header and the data after it
    copied = blob.read(0, 1000)
    assert isinstance(copied, bytearray) and copied == whole[:1000]


def test_a_file_is_read_back_from_its_layout(tmp_path: Path) -> None:
    path = tmp_path / "inputs"
    sha = TensorBlob(TENSORS).write_to(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    slots = read_layout(path)
    assert [slot.name for slot in slots] == sorted(TENSORS)
    loaded = load_tensors(path, slots)
    for name, array in TENSORS.items():
        assert loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (canonical_tensor_bytes(TENSORS)[:-1], "the payload has"),
        (canonical_tensor_bytes(TENSORS) + b"x", "after its last tensor"),
        (msgpack.packb([1, 2]), "not a map of tensors"),
        (b"", "not a map of tensors"),
        (  # names out of order: not the canonical form its digest was taken of
            msgpack.packb(
                {
                    "b": encode_tensors({"b": np.ones(2)})["b"],
                    "a": encode_tensors({"a": np.ones(2)})["a"],
                }
            ),
            "canonical order",
        ),
        (msgpack.packb({"x": {"dtype": "<f4", "shape": [3], "data": b"\0" * 8}}), "needs 12"),
        (msgpack.packb({"x": {"dtype": "|O", "shape": [1], "data": b"\0" * 8}}), "unsupported"),
        (msgpack.packb({"x": {"dtype": "string", "shape": [3], "data": b"\0" * 8}}), "needs 12"),
        (msgpack.packb({"x": {"shape": [1], "dtype": "<f4", "data": b"\0" * 4}}), "canonical"),
    ],
)
def test_malformed_payload_files_are_refused(
    tmp_path: Path, payload: bytes, complaint: str
) -> None:
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(DecodeError, match=complaint):
        read_layout(path)


def test_a_writer_checks_order_and_hash(tmp_path: Path) -> None:
    writer = BlobWriter(tmp_path, "x")
    writer.write(0, b"abc")
    with pytest.raises(DecodeError, match="3 expected"):
        writer.write(5, b"def")
    writer.write(3, b"def")
    with pytest.raises(DigestMismatchError):
        writer.commit(hashlib.sha256(b"other").hexdigest())
    assert not list(tmp_path.iterdir())  # the scratch file is gone
    writer = BlobWriter(tmp_path, "y")
    writer.write(0, b"abcdef")
    assert writer.commit(hashlib.sha256(b"abcdef").hexdigest()).read_bytes() == b"abcdef"


def serve(data: bytes, *, grow_at: int | None = None) -> Any:
    async def call(offset: int, length: int) -> dict[str, Any]:
        size = len(data) + (1 if grow_at is not None and offset >= grow_at else 0)
        return {"data": data[offset : offset + length], "size": size}

    return call


async def test_pull_keeps_a_small_payload_in_memory_and_a_large_one_in_a_file(
    tmp_path: Path,
) -> None:
    data, writer = await pull(serve(b"small"), 16, lambda: BlobWriter(tmp_path, "p"))
    assert data == b"small" and writer is None
    payload = bytes(range(256)) * 10
    data, writer = await pull(serve(payload), 100, lambda: BlobWriter(tmp_path, "p"))
    assert data is None and writer is not None
    assert writer.commit(hashlib.sha256(payload).hexdigest()).read_bytes() == payload


async def test_pull_refuses_a_payload_that_changes_size(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="changed"):
        await pull(serve(b"x" * 1000, grow_at=300), 100, lambda: BlobWriter(tmp_path, "p"))
    assert not list(tmp_path.iterdir())  # the scratch file is gone


async def test_push_sends_ordered_ranges_and_the_hash_last() -> None:
    payload = b"0123456789" * 7
    sent: list[dict[str, Any]] = []

    async def put(**fields: Any) -> dict[str, Any]:
        sent.append(fields)
        return {}

    async def read(offset: int, length: int) -> bytes:
        return payload[offset : offset + length]

    await push(put, read, len(payload), "sha", 32)
    assert [f["offset"] for f in sent] == [0, 32, 64]
    assert [f["more"] for f in sent] == [True, True, False]
    assert b"".join(f["data"] for f in sent) == payload
    assert sent[-1]["sha256"] == "sha" and "sha256" not in sent[0]


def test_inputs_over_the_task_limit_are_refused_with_both_sizes() -> None:
    x = np.zeros(1000, np.float32)
    with pytest.raises(ConfigError, match=r"4,000 bytes, more than max_task_bytes \(3,999\)"):
        prepare_inputs({"x": x}, 3999, 1 << 20)
    assert isinstance(prepare_inputs({"x": x}, 4000, 1 << 20), dict)  # fits one request
    assert isinstance(prepare_inputs({"x": x}, 4000, 1024), TensorBlob)  # sent in ranges


def test_the_task_limit_comes_from_the_option_then_the_environment() -> None:
    assert resolve_max_task_bytes(10, {"MESHGPU_MAX_TASK_BYTES": "20"}) == 10
    assert resolve_max_task_bytes(None, {"MESHGPU_MAX_TASK_BYTES": "20"}) == 20
    assert resolve_max_task_bytes(None, {}) == 4 << 30
    with pytest.raises(ConfigError, match="not a byte count"):
        resolve_max_task_bytes(None, {"MESHGPU_MAX_TASK_BYTES": "4G"})


async def test_pull_raises_a_failed_range_as_itself_and_drops_the_scratch_file(
    tmp_path: Path,
) -> None:
    payload = b"y" * 1000

    async def call(offset: int, length: int) -> dict[str, Any]:
        if offset >= 500:  # asked for while the range before it is written
            raise ClientError("connection to the holder broke")
        return {"data": payload[offset : offset + length], "size": len(payload)}

    with pytest.raises(ClientError, match="broke"):
        await pull(call, 100, lambda: BlobWriter(tmp_path, "p"))
    assert not list(tmp_path.iterdir())


def _write_durably(tmp_path: Path, data: bytes, step: int) -> tuple[BlobWriter, Path]:
    writer = BlobWriter(tmp_path, "copy", durable=True)
    writer.reserve(len(data) + 12345)  # more than it gets: commit cuts the rest
    for at in range(0, len(data), step):
        writer.write(at, data[at : at + step])
    return writer, writer.commit(hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("step", [16 << 20, 5000, (1 << 20) + 1])
def test_a_durable_copy_written_directly_has_the_bytes_and_the_size(
    tmp_path: Path, step: int
) -> None:
    """Ranges of any length (a partial last block, ranges that are not whole blocks)
    land at their offsets, and the file is cut to the payload's size."""
    data = np.random.default_rng(3).bytes((3 << 20) + 123)
    (tmp_path / "probe").touch()
    direct = DirectWriter.open(tmp_path / "probe")
    if direct is None:
        pytest.skip("this filesystem takes no O_DIRECT")
    direct.close()
    writer, path = _write_durably(tmp_path, data, step)
    assert path.read_bytes() == data
    assert writer._direct is None  # closed by commit


def test_a_direct_write_the_kernel_refuses_goes_on_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL from a direct write (an alignment the writer does not meet): the bytes
    staged and the rest of the range are written buffered, and so is every later range."""
    import errno
    import os

    writes = {"direct": 0}
    real_pwrite = os.pwrite

    def refusing_pwrite(descriptor: int, data: Any, offset: int) -> int:
        if offset >= 1 << 20:  # the first MiB goes direct, then the kernel refuses
            raise OSError(errno.EINVAL, "Invalid argument")
        writes["direct"] += 1
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    (tmp_path / "probe").touch()
    if DirectWriter.open(tmp_path / "probe") is None:
        pytest.skip("this filesystem takes no O_DIRECT")
    data = np.random.default_rng(4).bytes((2 << 20) + 777)
    writer, path = _write_durably(tmp_path, data, 700_000)
    assert path.read_bytes() == data
    assert writes["direct"] >= 1 and writer._direct is None


def test_a_filesystem_without_direct_io_is_written_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DirectWriter, "open", classmethod(lambda cls, path: None))
    data = np.random.default_rng(5).bytes((1 << 20) + 5)
    _, path = _write_durably(tmp_path, data, 300_000)
    assert path.read_bytes() == data


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_a_large_fresh_array_is_a_private_mapping_not_shared_memory() -> None:
    """blobs.fresh_array: a private anonymous mapping (Python's anonymous mmap is shared
    memory by default, whose faults and unmapping cost twice as much)."""
    from meshgpu.daemon.blobs import SMALL_PAGES_BYTES, fresh_array

    array = fresh_array((SMALL_PAGES_BYTES // 4,), np.dtype(np.float32))
    address = array.ctypes.data
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, permissions = line.split()[:2]
        low, high = (int(part, 16) for part in span.split("-"))
        if low <= address < high:
            assert permissions == "rw-p", line
            break
    else:
        raise AssertionError("the array's mapping is not in /proc/self/maps")
