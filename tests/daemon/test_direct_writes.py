"""The direct writer's write-behind: the disk's write of a range overlaps the caller's
next work, and what a queued write meets still reaches the caller before the copy
counts."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshgpu.daemon import direct_writes
from meshgpu.daemon.direct_writes import STAGE_BYTES, DirectWriter


def _open(path: Path) -> DirectWriter:
    path.touch()
    writer = DirectWriter.open(path)
    if writer is None:
        pytest.skip("this filesystem takes no O_DIRECT")
    return writer


def test_write_returns_while_the_disk_still_writes_the_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole range is queued: ``write`` returns with its pwrite still blocked (the
    caller hashes and copies meanwhile), and ``finish`` waits for every write."""
    release = threading.Event()
    started = threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(descriptor: int, data: Any, offset: int) -> int:
        started.set()
        assert release.wait(10)
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    data = np.random.default_rng(1).bytes(STAGE_BYTES + 5000)
    writer = _open(tmp_path / "copy")
    writer.write(data[:STAGE_BYTES])
    assert started.wait(10)  # the write is under way in the writer's thread
    assert writer.written == STAGE_BYTES
    release.set()
    writer.write(data[STAGE_BYTES:])
    writer.finish(len(data))
    writer.close()
    assert (tmp_path / "copy").read_bytes() == data


def test_an_error_of_a_queued_write_is_raised_by_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error (not a refusal) in the writer's thread fails the copy: the next
    ``write`` or ``finish`` raises it, so the copy is never synced and counted."""

    def failing_pwrite(descriptor: int, data: Any, offset: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    writer = _open(tmp_path / "copy")
    writer.write(bytes(STAGE_BYTES))
    with pytest.raises(OSError) as raised:
        writer.finish(STAGE_BYTES)
    assert raised.value.errno == errno.EIO
    writer.close()


def test_closing_with_a_write_under_way_leaves_the_descriptor_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abandoned copy (``close`` without ``finish``, on the event loop) does not wait
    for the disk, and its descriptor is closed only once the write under way ended: a
    number closed early could be reused by another file and written to."""
    release = threading.Event()
    started = threading.Event()
    closed: list[int] = []
    descriptor_closed = threading.Event()
    real_pwrite, real_close = os.pwrite, os.close

    def slow_pwrite(descriptor: int, data: Any, offset: int) -> int:
        started.set()
        assert release.wait(10)
        assert descriptor not in closed
        return real_pwrite(descriptor, data, offset)

    def noting_close(descriptor: int) -> None:
        closed.append(descriptor)
        real_close(descriptor)
        descriptor_closed.set()

    writer = _open(tmp_path / "copy")
    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    monkeypatch.setattr(direct_writes.os, "close", noting_close)
    writer.write(bytes(STAGE_BYTES))
    assert started.wait(10)
    writer.close()
    assert closed == []
    release.set()
    assert descriptor_closed.wait(10)
    assert len(closed) == 1


def test_a_refusal_met_at_commit_gives_the_direct_descriptor_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload of one range meets a refused direct write only in ``commit`` (the write
    was queued): the bytes go buffered, the copy is whole, and the direct descriptor is
    closed, not left open for the life of the daemon."""
    from meshgpu.daemon.blobs import BlobWriter

    def refusing_pwrite(descriptor: int, data: Any, offset: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    probe = _open(tmp_path / "probe")  # skips where the filesystem takes no O_DIRECT
    probe.close()
    closed: list[int] = []
    real_close = os.close

    def noting_close(descriptor: int) -> None:
        closed.append(descriptor)
        real_close(descriptor)

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    monkeypatch.setattr(direct_writes.os, "close", noting_close)
    data = np.random.default_rng(2).bytes(STAGE_BYTES // 2 + 777)
    writer = BlobWriter(tmp_path, "p", durable=True)
    direct = writer._direct
    assert direct is not None
    writer.write(0, data)
    path = writer.commit(None)
    assert path.read_bytes() == data
    assert direct._descriptor in closed


def test_a_staging_buffer_that_cannot_be_had_leaves_no_descriptor_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open`` opened the file, then the staging buffers' memory was refused: the
    error reaches the caller (a StorageError there) and the descriptor is closed."""
    _open(tmp_path / "probe").close()  # skips where the filesystem takes no O_DIRECT
    opened: list[int] = []
    closed: list[int] = []
    real_open, real_close = os.open, os.close

    def noting_open(path: Any, flags: int, *args: Any) -> int:
        descriptor = real_open(path, flags, *args)
        opened.append(descriptor)
        return descriptor

    def noting_close(descriptor: int) -> None:
        closed.append(descriptor)
        real_close(descriptor)

    def no_memory(*args: Any, **options: Any) -> Any:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    (tmp_path / "p").touch()
    monkeypatch.setattr(direct_writes.os, "open", noting_open)
    monkeypatch.setattr(direct_writes.os, "close", noting_close)
    monkeypatch.setattr(direct_writes.mmap, "mmap", no_memory)
    with pytest.raises(OSError, match="allocate"):
        DirectWriter.open(tmp_path / "p")
    assert len(opened) == 1
    assert closed == opened


def test_abort_after_a_full_disk_deletes_the_scratch_file_and_raises_nothing(
    tmp_path: Path,
) -> None:
    """Closing the scratch file flushes what is buffered, which fails again on a full
    disk: ``abort`` (invoked while a StorageError is being raised) must neither replace
    that error with a bare OSError nor keep the partial file, which holds the disk full."""
    from meshgpu.daemon.blobs import BlobWriter

    writer = BlobWriter(tmp_path, "p")
    writer._handle.close()
    writer._handle = open("/dev/full", "wb")  # noqa: SIM115 (a disk that is full)
    writer._handle.write(b"buffered, flushed at close")
    writer.abort()
    assert not writer.path.exists()
