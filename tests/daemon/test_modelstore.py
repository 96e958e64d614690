"""The model cache: content addressing, digest checks, LRU eviction, pins."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from meshgpu.daemon.modelstore import ModelStore, digest_of
from meshgpu.errors import DigestMismatchError, DiskFullError, StorageError


def model(n: int, size: int = 1000) -> bytes:
    return bytes([n]) * size


def test_put_is_content_addressed_and_survives_restart(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, max_bytes=10_000)
    digest = store.put(model(1))
    assert digest == digest_of(model(1))
    assert store.read(digest) == model(1)
    assert ModelStore(tmp_path, max_bytes=10_000).has(digest)


def test_chunked_fetch_is_verified_before_install(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, max_bytes=10_000)
    expected = digest_of(model(2))
    writer = store.writer(expected)
    writer.write(model(2)[:400])
    writer.write(model(2)[400:])
    assert writer.commit() == tmp_path / f"{expected}.onnx"
    bad = store.writer(digest_of(model(3)))
    bad.write(model(4))
    with pytest.raises(DigestMismatchError, match="another peer"):
        bad.commit()
    assert not store.has(digest_of(model(3)))
    assert not list(tmp_path.glob("*.partial"))


class FullDiskFile:
    """A file on a full disk: writes are buffered, flushing them fails (as close does)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        self.real.close()
        self.flush()


def test_a_full_disk_while_storing_a_model_is_a_disk_full_error(tmp_path: Path) -> None:
    # abort() closed the file, which flushed again: the second ENOSPC escaped as a bare
    # OSError (an "internal error" to the client) and left the partial file behind.
    store = ModelStore(tmp_path, max_bytes=10_000)
    writer = store.writer(digest_of(model(5)))
    writer._handle = FullDiskFile(writer._handle)  # type: ignore[assignment]
    writer.write(model(5))
    with pytest.raises(DiskFullError, match="disk full while installing model"):
        writer.commit()
    assert not list(tmp_path.glob("*.partial")) and not store.has(digest_of(model(5)))


def test_put_with_wrong_expected_digest_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, max_bytes=10_000)
    with pytest.raises(DigestMismatchError):
        store.put(model(5), expected=digest_of(model(6)))
    with pytest.raises(StorageError, match="sha256"):
        store.put(model(5), expected="../../etc/passwd")


def test_least_recently_used_is_evicted_first(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, max_bytes=2500)
    first, second = store.put(model(1)), store.put(model(2))
    os.utime(tmp_path / f"{first}.onnx", (1, 1))
    store.path(first)  # use first again: second is now the oldest
    third = store.put(model(3))
    assert store.digests() == sorted([first, third])
    assert store.evictions == 1
    assert not (tmp_path / f"{second}.onnx").exists()


def test_pinned_model_is_never_evicted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, max_bytes=1500)
    first = store.put(model(1))
    with store.pinned(first):
        second = store.put(model(2))
        assert store.has(first) and store.has(second) and store.over_limit
    assert store.has(second) and not store.has(first)
    assert not store.over_limit


def test_partial_downloads_are_swept_at_start(tmp_path: Path) -> None:
    (tmp_path / f"{'a' * 64}.partial").write_bytes(b"half")
    ModelStore(tmp_path, max_bytes=100)
    assert not list(tmp_path.glob("*.partial"))


def test_uses_set_the_mtime_at_most_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshgpu.daemon import modelstore

    store = ModelStore(tmp_path, max_bytes=10_000)
    digest = store.put(model(1))
    path = tmp_path / f"{digest}.onnx"
    base = time.time()
    clock = [base + 120]
    monkeypatch.setattr(modelstore.time, "time", lambda: clock[0])
    store.path(digest)
    assert path.stat().st_mtime == pytest.approx(base + 120)
    clock[0] = base + 150  # within the minute: the order in memory moves, the file not
    store.path(digest)
    assert path.stat().st_mtime == pytest.approx(base + 120)
    clock[0] = base + 181
    with store.pinned(digest):
        pass
    assert path.stat().st_mtime == pytest.approx(base + 181)
