"""The journal: durability contract, torn tails, full disks, compaction."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from meshgpu.daemon import journal as journal_module
from meshgpu.daemon.journal import JOURNAL_NAME, Journal
from meshgpu.errors import DiskFullError


def test_replay_restores_last_value_per_key_and_drops_deleted(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.put(("n-a", 1), {"state": "pending"})
    journal.put(("n-a", 2), {"state": "pending"})
    journal.put(("n-a", 1), {"state": "done"})
    journal.delete(("n-a", 2))
    journal.put("delivered/n-a/1", True)
    journal.close()
    replayed = Journal.open(tmp_path)
    assert dict(replayed.items()) == {("n-a", 1): {"state": "done"}, "delivered/n-a/1": True}
    assert replayed.get(["n-a", 1]) == {"state": "done"}
    assert replayed.torn_bytes == 0


@pytest.mark.parametrize("cut", [1, 3, 8, 12])
def test_torn_tail_is_cut_and_kept_aside(tmp_path: Path, cut: int) -> None:
    journal = Journal.open(tmp_path)
    journal.put("a", 1)
    journal.put("b", b"x" * 40)
    journal.close()
    path = tmp_path / JOURNAL_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    replayed = Journal.open(tmp_path)
    assert dict(replayed.items()) == {"a": 1}
    assert replayed.torn_bytes > 0
    assert list(tmp_path.glob(f"{JOURNAL_NAME}.corrupt-*"))
    replayed.put("c", 3)  # appends after the cut, not after the garbage
    replayed.close()
    assert dict(Journal.open(tmp_path).items()) == {"a": 1, "c": 3}


def test_flipped_byte_stops_replay_at_that_record(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.put("a", 1)
    journal.put("b", 2)
    journal.close()
    path = tmp_path / JOURNAL_NAME
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert dict(Journal.open(tmp_path).items()) == {"a": 1}


def test_full_disk_is_a_clear_error_and_the_journal_stays_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path)
    journal.put("a", 1)
    real_write = os.write

    def half_then_full(descriptor: int, data: bytes) -> int:
        monkeypatch.setattr(journal_module.os, "write", failing_write)
        return real_write(descriptor, bytes(data)[: len(data) // 2])

    def failing_write(descriptor: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", half_then_full)
    with pytest.raises(DiskFullError, match="disk full"):
        journal.put("b", b"y" * 100)
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert journal.get("b") is None
    journal.put("c", 3)
    journal.close()
    replayed = Journal.open(tmp_path)
    assert dict(replayed.items()) == {"a": 1, "c": 3}
    assert replayed.torn_bytes == 0


def test_fsync_happens_before_put_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.open(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    journal.put("a", 1)
    journal.append([("b", 2), ("c", 3)])
    assert len(synced) == 2  # one per call, batches share one


def test_compaction_keeps_live_records_and_shrinks_file(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, compact_min_bytes=1000)
    for round_number in range(50):
        journal.put("task", {"round": round_number, "pad": b"z" * 50})
        journal.put(f"gone-{round_number}", 1)
        journal.delete(f"gone-{round_number}")
    journal.put("keep", "me")
    before = (tmp_path / JOURNAL_NAME).stat().st_size
    assert journal.needs_compaction()
    journal.compact()
    after = (tmp_path / JOURNAL_NAME).stat().st_size
    assert after < before / 10
    assert not journal.needs_compaction()
    journal.put("after", 1)
    journal.close()
    replayed = Journal.open(tmp_path)
    assert replayed.get("task")["round"] == 49
    assert dict(replayed.items()).keys() == {"task", "keep", "after"}
    assert not list(tmp_path.glob("*.compact"))


@pytest.fixture
def tiny_filesystem(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 64 KiB tmpfs (needs root; skipped with the reason otherwise)."""
    import subprocess

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or 'not root'}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_really_full_tmpfs_raises_disk_full_and_recovers(tiny_filesystem: Path) -> None:
    journal = Journal.open(tiny_filesystem)
    written = 0
    with pytest.raises(DiskFullError):
        for number in range(1000):
            journal.put(number, b"q" * 1000)
            written = number + 1
    assert 0 < written < 1000
    journal.close()
    replayed = Journal.open(tiny_filesystem)
    assert len(replayed) == written


def test_write_is_durable_only_after_sync_and_sync_covers_earlier_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    first = journal.write([("a", 1)])
    second = journal.write([("b", 2)], deletes=["a", "never-written"])
    assert not synced and journal.synced_seq < first < second
    assert journal.sync() == second and len(synced) == 1  # one fsync for both writes
    assert journal.sync() == second and len(synced) == 1  # nothing new: no fsync
    journal.close()
    assert dict(Journal.open(tmp_path).items()) == {"b": 2}


def test_a_write_during_compaction_reaches_the_compacted_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon appends on its loop while compaction runs in a worker thread: a record
    written after compaction took its snapshot must not be lost with the old file."""
    journal = Journal.open(tmp_path, compact_min_bytes=0)
    for n in range(20):
        journal.put("task", n)
    real_fsync = os.fsync
    writes = iter([("late", "written mid-compaction")])

    def fsync_then_write(descriptor: int) -> None:
        real_fsync(descriptor)
        for key, value in writes:  # once: the first fsync is the snapshot's
            journal.write([(key, value)])

    monkeypatch.setattr(journal_module.os, "fsync", fsync_then_write)
    journal.compact()
    monkeypatch.setattr(journal_module.os, "fsync", real_fsync)
    assert journal.synced_seq == journal.written_seq
    journal.close()
    assert dict(Journal.open(tmp_path).items()) == {"task": 19, "late": "written mid-compaction"}
