"""Large files and arrays are given back in the release thread, never by the caller
(the event loop): a GiB's unlink or munmap stalled a daemon past its peers' suspicion
timeout (docs/daemon.md, "Liveness under large transfers")."""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshgpu.daemon.background_release import SMALL_BYTES, BackgroundRelease
from meshgpu.daemon.blobs import TensorBlob, TensorReceiver
from meshgpu.daemon.payloads import PayloadStore

INPUTS = "inputs"


def unlinks_by_thread(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (file name, thread) of every ``Path.unlink`` from now on."""
    calls: list[tuple[str, int]] = []
    original = Path.unlink

    def recording(self: Path, missing_ok: bool = False) -> None:
        calls.append((self.name, threading.get_ident()))
        original(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", recording)
    return calls


def test_a_deleted_payload_leaves_its_name_at_once_and_is_unlinked_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = BackgroundRelease()
    store = PayloadStore(tmp_path, release=release)
    store.put_bytes("a" * 64, INPUTS, b"x" * 100)
    with open(store.path("a" * 64, INPUTS), "r+b") as handle:  # as large as a GiB's blocks
        os.posix_fallocate(handle.fileno(), 0, SMALL_BYTES)
    calls = unlinks_by_thread(monkeypatch)
    store.delete("a" * 64, INPUTS)
    assert not store.has("a" * 64, INPUTS)  # gone from its place before the caller returns
    assert release.wait_idle(10)
    assert list(tmp_path.iterdir()) == []
    assert calls and all(thread != threading.get_ident() for _, thread in calls)


def test_a_scratch_file_left_by_a_crash_before_its_unlink_is_swept_at_start(
    tmp_path: Path,
) -> None:
    class Stalled(BackgroundRelease):
        def _queue(self, job: Any) -> None:  # the process died before the thread ran
            pass

    store = PayloadStore(tmp_path, release=Stalled())
    store.put_bytes("b" * 64, INPUTS, b"y" * 100)
    with open(store.path("b" * 64, INPUTS), "r+b") as handle:
        os.posix_fallocate(handle.fileno(), 0, SMALL_BYTES)
    store.delete("b" * 64, INPUTS)
    assert [path.suffix for path in tmp_path.iterdir()] == [".tmp"]
    PayloadStore(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_aborted_copy_is_unlinked_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = BackgroundRelease()
    writer = PayloadStore(tmp_path, release=release).writer("c" * 64, INPUTS)
    writer.reserve(SMALL_BYTES)  # the payload's size, allocated before the ranges come
    writer.write(0, b"z" * 1000)
    calls = unlinks_by_thread(monkeypatch)
    writer.abort()
    assert release.wait_idle(10)
    assert list(tmp_path.iterdir()) == []
    assert calls and all(thread != threading.get_ident() for _, thread in calls)


def freed_on(array: np.ndarray) -> list[int]:
    """The thread the array's memory is freed on, once it is."""
    threads: list[int] = []
    weakref.finalize(array, lambda: threads.append(threading.get_ident()))
    return threads


def test_an_aborted_receivers_arrays_are_freed_in_the_thread() -> None:
    """A warm copy no run took, a transfer that failed: the receiver's arrays (its own
    mappings, a GiB's munmap taking seconds at load) go in the release thread."""
    release = BackgroundRelease()
    array = np.arange(SMALL_BYTES // 4 * 2, dtype=np.float32)
    blob = TensorBlob({"x": array})
    receiver = TensorReceiver(release=release)
    receiver.reserve(blob.size)
    receiver.write(0, blob.read(0, blob.size - 10))  # mid-way through the array
    received = receiver._tensors["x"]
    threads = freed_on(received)
    del received
    receiver.abort()
    assert release.wait_idle(10)
    assert threads == [threads[0]] and threads[0] != threading.get_ident()


def test_an_emptied_dict_frees_its_arrays_in_the_thread() -> None:
    """A run's inputs (DataPlane._run_task): the dict is emptied there, whatever the
    caller does with its own reference to the dict afterwards."""
    release = BackgroundRelease()
    tensors = {"x": np.ones(SMALL_BYTES // 4, np.float32)}
    threads = freed_on(tensors["x"])
    release.empty(tensors)
    assert release.wait_idle(10)
    assert tensors == {}
    assert threads and threads[0] != threading.get_ident()


def test_small_things_are_given_back_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = BackgroundRelease()
    store = PayloadStore(tmp_path, release=release)
    store.put_bytes("d" * 64, INPUTS, b"x" * 100)
    store.delete("d" * 64, INPUTS)
    assert list(tmp_path.iterdir()) == []  # no thread needed
    tensors = {"x": np.ones(10, np.float32)}
    release.empty(tensors)
    assert tensors == {} and release.released == 0
