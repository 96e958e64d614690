"""Task payloads: tensor encoding and the per-task store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meshgpu.core.tasks import TaskId
from meshgpu.daemon.framing import pack, unpack
from meshgpu.daemon.groups import MEMBER_RESULT, MemberId, member_result_key
from meshgpu.daemon.payloads import PayloadStore, decode_tensors, encode_tensors, task_file_stem
from meshgpu.errors import DecodeError


def test_tensors_roundtrip_through_msgpack() -> None:
    tensors = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "big_endian": np.arange(3, dtype=">i4"),
        "flag": np.array(True),
        "empty": np.zeros((0, 5), dtype=np.float64),
    }
    back = decode_tensors(unpack(pack(encode_tensors(tensors))))
    assert back.keys() == tensors.keys()
    for name, array in tensors.items():
        assert back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


def test_strings_and_bfloat16_roundtrip_through_msgpack() -> None:
    import ml_dtypes

    tensors = {
        "text": np.array([["a", "héllo"], ["", "x" * 300]], dtype=object),
        "half": np.array([[1.5, -2.0, 3.0e38]], dtype=ml_dtypes.bfloat16),
    }
    encoded = encode_tensors(tensors)
    assert encoded["text"]["dtype"] == "string" and encoded["half"]["dtype"] == "bfloat16"
    # The Open Inference Protocol's BYTES form: a 4-byte little-endian length, then UTF-8.
    assert encoded["text"]["data"].startswith(b"\x01\x00\x00\x00a\x06\x00\x00\x00h\xc3\xa9llo")
    assert encoded["half"]["data"] == tensors["half"].view(np.uint16).astype("<u2").tobytes()
    back = decode_tensors(unpack(pack(encoded)))
    assert back["text"].dtype == object and back["text"].tolist() == tensors["text"].tolist()
    assert back["half"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back["half"].view(np.uint16), tensors["half"].view(np.uint16))


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"\x01\x00\x00\x00a", "cannot hold 2 strings"),
        (b"\x01\x00\x00\x00a\x05\x00\x00\x00b", "5 bytes long but only 1"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00bc", "1 bytes after the last"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00\xff", "element 1 is not UTF-8"),
    ],
)
def test_malformed_strings_are_decode_errors(data: bytes, complaint: str) -> None:
    with pytest.raises(DecodeError, match=complaint):
        decode_tensors({"x": {"dtype": "string", "shape": [2], "data": data}})


@pytest.mark.parametrize(
    "encoded",
    [
        [],
        {"x": {"dtype": "<V2", "shape": [1], "data": b"\x00" * 2}},
        {"x": {"dtype": "bfloat16", "shape": [2], "data": b"\x00" * 2}},
        {"x": {"dtype": "<f4", "shape": [2], "data": b"\x00" * 7}},
        {"x": {"dtype": "|O", "shape": [1], "data": b"\x00" * 8}},
        {"x": {"shape": [1], "data": b""}},
        {"x": {"dtype": "<f4", "shape": [-1], "data": b""}},
    ],
)
def test_malformed_tensors_are_decode_errors(encoded: object) -> None:
    with pytest.raises(DecodeError):
        decode_tensors(encoded)


def test_store_keeps_inputs_and_results_per_task(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path)
    task = ("n-a1", 7)
    store.put(task, "inputs", {"x": np.ones(3, dtype=np.float32)})
    store.put(task, "result", {"y": np.zeros(2, dtype=np.int64)})
    store.put(("n-a1", 70), "inputs", {"x": np.ones(1)})
    np.testing.assert_array_equal(PayloadStore(tmp_path).get(task, "inputs")["x"], np.ones(3))
    store.delete(task, "inputs")
    assert not store.has(task, "inputs") and store.has(task, "result")
    store.delete(task)
    assert store.get(task, "result") is None
    assert store.has(("n-a1", 70), "inputs")


def test_keys_come_back_from_the_directory(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path)
    store.put_bytes(("n/1~x", 7), "result", b"r")
    store.put_bytes("abc", "inputs", b"i")
    assert store.keys("result") == [("n/1~x", "7")]
    assert store.keys("inputs") == [("abc",)]


def test_task_stems_are_safe_and_distinct() -> None:
    stems = {task_file_stem(t) for t in [("a", 1), ("a", 11), ("a~1", 1), "../x", ("a/b", 1)]}
    assert len(stems) == 5
    assert all("/" not in stem for stem in stems)


def test_canonical_bytes_ignore_name_order() -> None:
    from meshgpu.daemon.payloads import canonical_tensor_bytes, tensors_from_bytes

    a, b = np.ones(2, dtype=np.float32), np.zeros(3, dtype=np.int8)
    assert canonical_tensor_bytes({"a": a, "b": b}) == canonical_tensor_bytes({"b": b, "a": a})
    back = tensors_from_bytes(canonical_tensor_bytes({"a": a, "b": b}))
    np.testing.assert_array_equal(back["b"], b)
    with pytest.raises(DecodeError):
        tensors_from_bytes(b"\xc1garbage")


def test_small_payloads_live_in_the_journal_and_large_ones_in_files(tmp_path: Path) -> None:
    from meshgpu.daemon.journal import Journal
    from meshgpu.daemon.payloads import INLINE_MAX_BYTES

    journal = Journal.open(tmp_path / "journal")
    store = PayloadStore(tmp_path / "payloads", journal)
    small, large = b"s" * 100, b"L" * (INLINE_MAX_BYTES + 1)
    seq = store.put_inline("d" * 64, "inputs", small)
    assert seq is not None and journal.synced_seq < seq  # written, not yet synced
    assert store.put_inline("e" * 64, "inputs", large) is None  # the caller uses a file
    store.put_bytes("e" * 64, "inputs", large)
    store.put_inline(("n-a", 7), "result", b"r")
    store.put_inline(("n-a", 8), "result", b"orphan")
    assert store.get_memory("d" * 64, "inputs") == small
    assert store.get_bytes("e" * 64, "inputs") == large
    assert sorted(store.keys("result")) == [("n-a", "7"), ("n-a", "8")]
    journal.sync()
    journal.close()
    journal = Journal.open(tmp_path / "journal")
    store = PayloadStore(tmp_path / "payloads", journal)
    assert store.get_bytes("d" * 64, "inputs") == small
    assert store.get_bytes(("n-a", 7), "result") == b"r"
    assert store.sweep_inline({"d" * 64}, {("n-a", 7)}) == 1  # the result of no task
    assert store.get_bytes(("n-a", 8), "result") is None
    store.delete("d" * 64, "inputs")
    assert not store.has("d" * 64, "inputs") and store.has("e" * 64, "inputs")


def test_a_half_finished_upload_left_by_a_crash_is_removed_at_start(tmp_path: Path) -> None:
    """A receiver killed mid-upload leaves its scratch file, allocated to the payload's
    whole size; the next start removes it and keeps every installed payload."""
    store = PayloadStore(tmp_path)
    store.put_bytes("d" * 64, "inputs", b"installed")
    writer = store.writer("e" * 64, "inputs", durable=True)
    writer.reserve(1 << 20)
    writer.write(0, b"\x01" * 1000)  # ... and the process dies here: no commit, no abort
    assert writer.path.exists()
    PayloadStore(tmp_path)
    assert not writer.path.exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert store.get_bytes("d" * 64, "inputs") == b"installed"


def test_member_outputs_left_by_a_previous_run_are_removed_at_start(tmp_path: Path) -> None:
    """A member's outputs the entry stored for ranged fetches are dropped only when its
    group is collected, which a restart forgets: the next start removes every one (a
    client still fetching asks for the member again, and the entry stores it anew) and
    keeps the other payloads."""
    store = PayloadStore(tmp_path)
    member = MemberId(TaskId("n-a1", 7), 2)
    store.put_bytes(member_result_key(member, 1), MEMBER_RESULT, b"m" * 4096)
    store.put_bytes(member_result_key(member, None), MEMBER_RESULT, b"o" * 4096)
    store.put_bytes(("n-a1", 7), "result", b"r" * 4096)
    store.put_bytes("d" * 64, "inputs", b"i" * 4096)
    reopened = PayloadStore(tmp_path)
    reopened.release.wait_idle(10)
    assert not list(tmp_path.glob(f"*.{MEMBER_RESULT}*"))
    assert reopened.size(member_result_key(member, 1), MEMBER_RESULT) is None
    assert reopened.get_bytes(("n-a1", 7), "result") == b"r" * 4096
    assert reopened.get_bytes("d" * 64, "inputs") == b"i" * 4096


def test_install_syncs_the_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshgpu.daemon.payloads as payloads

    store = PayloadStore(tmp_path)
    synced: list[tuple[Path, bool]] = []
    monkeypatch.setattr(
        payloads,
        "fsync_directory",
        lambda directory: synced.append((directory, store.path("f" * 64, "inputs").exists())),
    )
    writer = store.writer("f" * 64, "inputs", durable=True)
    writer.write(0, b"\x02" * 100)
    store.install(writer.commit(None), "f" * 64, "inputs")
    assert synced == [(tmp_path, True)]  # after the rename, on the payloads' directory
