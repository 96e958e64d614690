"""An append-only journal of keyed records in the data dir.

The daemon journals what it must not forget across a crash: the task records it holds as
a replica and the marks of results already delivered to their client. The journal is a
keyed log: ``put(key, value)`` supersedes earlier records of the key, ``delete(key)``
retires it, and replay yields the live value of every key. Nothing here knows what a
task is; the core decides what to persist and the daemon writes it.

On disk (``journal.log``), each record is::

    length (4 bytes, big-endian) | crc32 of the body (4 bytes) | body (msgpack [op, key, value])

Contract:

* ``append`` returns only after the bytes are written *and fsynced*: a task may be
  acknowledged to its client after ``append`` returns, never before.
* Group commit, for the daemon's loop: ``write`` appends without syncing and returns the
  record's sequence number; ``sync`` (blocking, run in a worker thread) makes every record
  written before it durable and returns the highest sequence number it covers. A record is
  durable once ``synced_seq`` reaches its number; whatever was written earlier in the file
  is durable with it, which is why small payloads travel *inside* the journal: one append
  and one shared fsync instead of a file, an fsync and a rename each.
* ``write`` may run on one thread while ``sync`` or ``compact`` runs on another (a lock
  orders them); ``sync`` and ``compact`` must not run at the same time as each other.
* Replay tolerates a torn tail (a crash mid-write leaves a short or bad record at the
  end): replay stops at the first record that is incomplete or fails its crc, truncates
  the file there, and keeps the bytes it cut in ``journal.log.corrupt-<offset>`` so
  nothing is destroyed silently.
* A full disk raises :class:`~meshgpu.errors.DiskFullError` with a message saying so;
  the partial record is cut off again, so the journal stays valid and later appends
  work once space is freed.
* ``compact()`` writes the live records to ``journal.log.compact``, fsyncs it, renames
  it over the log and fsyncs the directory, so a crash at any point leaves either the
  old or the new log, both complete.

Rejected alternatives: SQLite would give all of this, but its file locking and WAL on
lab NFS home directories is a known source of grief, and one keyed log is all we need;
one file per task makes fsync cost per directory entry and makes compaction a tree walk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import zlib
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack

from meshgpu.errors import DiskFullError, StorageError

HEADER = struct.Struct("!II")
JOURNAL_NAME = "journal.log"
MAX_RECORD_BYTES = 16 * 1024 * 1024
_PUT = 0
_DELETE = 1
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _freeze(key: Any) -> Hashable:
    """msgpack gives lists back; keys must be hashable, so tuples they become."""
    if isinstance(key, list):
        return tuple(_freeze(part) for part in key)
    return key  # type: ignore[no-any-return]


def _encode(op: int, key: Any, value: Any) -> bytes:
    body: bytes = msgpack.packb([op, key, value], use_bin_type=True)
    if len(body) > MAX_RECORD_BYTES:
        raise StorageError(
            f"journal record for {key!r} is {len(body)} bytes, the limit is "
            f"{MAX_RECORD_BYTES}; tensors belong in the payload store, not the journal"
        )
    return HEADER.pack(len(body), zlib.crc32(body)) + body


class Journal:
    """The keyed append-only log of one data dir; open it with :meth:`open`."""

    def __init__(
        self, directory: Path, *, compact_ratio: float = 2.0, compact_min_bytes: int = 1 << 20
    ) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME
        self._compact_ratio = compact_ratio
        self._compact_min_bytes = compact_min_bytes
        self._live: dict[Hashable, Any] = {}
        self._live_bytes: dict[Hashable, int] = {}
        self._file_bytes = 0
        self._descriptor = -1
        self._lock = threading.Lock()
        self._compacting: list[bytes] | None = None
        self.written_seq = 0
        """Number of the last record written (not necessarily durable)."""
        self.synced_seq = 0
        """Every record numbered up to this one is on stable storage."""
        self.torn_bytes = 0
        """Bytes cut from the tail at the last replay (0 after a clean shutdown)."""

    @classmethod
    def open(cls, directory: Path, **options: Any) -> Journal:
        """Replay the log in ``directory`` (creating it if absent) and open it for appending."""
        journal = cls(directory, **options)
        journal._replay()
        return journal

    def __len__(self) -> int:
        return len(self._live)

    def get(self, key: Any) -> Any:
        return self._live.get(_freeze(key))

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """Every live (key, value), in the order first written."""
        return iter(list(self._live.items()))

    def put(self, key: Any, value: Any) -> None:
        """Record ``value`` for ``key`` durably (written and fsynced on return)."""
        self.append([(key, value)])

    def delete(self, key: Any) -> None:
        """Retire ``key`` durably; a no-op if it is not live."""
        if _freeze(key) in self._live:
            self._write([(_DELETE, key, None)])
            self.sync()

    def append(self, puts: list[tuple[Any, Any]]) -> None:
        """Record several values with one write and one fsync (a batch of effects)."""
        if puts:
            self._write([(_PUT, key, value) for key, value in puts])
            self.sync()

    def write(self, puts: list[tuple[Any, Any]], deletes: Sequence[Any] = ()) -> int:
        """Append puts and deletes *without* syncing; returns the sequence number that
        :meth:`sync` must cover before any of them may be relied upon."""
        records = [(_PUT, key, value) for key, value in puts]
        records += [(_DELETE, key, None) for key in deletes if _freeze(key) in self._live]
        if records:
            self._write(records)
        return self.written_seq

    def sync(self) -> int:
        """Make everything written so far durable (blocking); returns the sequence number
        now covered. Concurrent ``write`` calls may add records meanwhile: those wait for
        the next ``sync``."""
        with self._lock:
            descriptor, covered = self._descriptor, self.written_seq
        if covered <= self.synced_seq:
            return self.synced_seq
        if descriptor < 0:
            raise StorageError(f"journal {self.path} is closed")
        try:
            os.fsync(descriptor)
        except OSError as error:
            raise storage_error(error, f"syncing {self.path}") from None
        self.synced_seq = max(self.synced_seq, covered)
        return self.synced_seq

    def live_bytes(self) -> int:
        return sum(self._live_bytes.values())

    def needs_compaction(self) -> bool:
        live = sum(self._live_bytes.values())
        return (
            self._file_bytes > self._compact_min_bytes
            and self._file_bytes > self._compact_ratio * live
        )

    def compact(self) -> None:
        """Rewrite only the live records to a new file and swap it in atomically.

        Safe against concurrent :meth:`write` calls: the live records are taken under the
        lock, written and fsynced without it, and whatever was written to the old file
        meanwhile is copied to the new one under the lock before the swap."""
        scratch = self.path.with_name(JOURNAL_NAME + ".compact")
        with self._lock:
            items = list(self._live.items())
            self._compacting = []
        try:
            records = [_encode(_PUT, key, value) for key, value in items]
            data = b"".join(records)
            descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(descriptor, data)
                os.fsync(descriptor)
                with self._lock:
                    tail = b"".join(self._compacting)
                    if tail:
                        _write_all(descriptor, tail)
                        os.fsync(descriptor)
                    os.replace(scratch, self.path)
                    fsync_directory(self.directory)
                    os.close(self._descriptor)
                    self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND)
                    self._file_bytes = len(data) + len(tail)
                    self.synced_seq = self.written_seq
            finally:
                os.close(descriptor)
        except OSError as error:
            scratch.unlink(missing_ok=True)
            raise storage_error(error, f"compacting {self.path}") from None
        finally:
            self._compacting = None

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def _write(self, records: list[tuple[int, Any, Any]]) -> None:
        encoded = [_encode(op, key, value) for op, key, value in records]
        data = b"".join(encoded)
        with self._lock:
            if self._descriptor < 0:
                raise StorageError(f"journal {self.path} is closed")
            try:
                _write_all(self._descriptor, data)
            except OSError as error:
                # Cut any partial record off so the log stays a sequence of whole records.
                # If even that fails, the torn tail is cut at the next replay instead.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._descriptor, self._file_bytes)
                raise storage_error(error, f"appending to {self.path}") from None
            if self._compacting is not None:
                self._compacting.append(data)
            self._file_bytes += len(data)
            self.written_seq += 1
            for (op, key, value), record in zip(records, encoded, strict=True):
                frozen = _freeze(key)
                if op == _PUT:
                    self._live.pop(frozen, None)  # re-inserted last: order of last write
                    self._live[frozen] = value
                    self._live_bytes[frozen] = len(record)
                else:
                    self._live.pop(frozen, None)
                    self._live_bytes.pop(frozen, None)

    def _replay(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            data = self.path.read_bytes() if self.path.exists() else b""
        except OSError as error:
            raise storage_error(error, f"reading {self.path}") from None
        offset = 0
        while offset < len(data):
            if offset + HEADER.size > len(data):
                break
            length, crc = HEADER.unpack_from(data, offset)
            start = offset + HEADER.size
            body = data[start : start + length]
            if length > MAX_RECORD_BYTES or len(body) < length or zlib.crc32(body) != crc:
                break
            try:
                op, key, value = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError):
                break
            frozen = _freeze(key)
            if op == _PUT:
                self._live.pop(frozen, None)
                self._live[frozen] = value
                self._live_bytes[frozen] = HEADER.size + length
            else:
                self._live.pop(frozen, None)
                self._live_bytes.pop(frozen, None)
            offset = start + length
        self.torn_bytes = len(data) - offset
        try:
            if self.torn_bytes:
                keep = self.path.with_name(f"{JOURNAL_NAME}.corrupt-{offset}")
                keep.write_bytes(data[offset:])
                with open(self.path, "r+b") as handle:
                    handle.truncate(offset)
                    os.fsync(handle.fileno())
            self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as error:
            raise storage_error(error, f"opening {self.path}") from None
        self._file_bytes = offset


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def storage_error(error: OSError, doing: str) -> StorageError:
    if error.errno in _FULL_ERRNOS:
        return DiskFullError(
            f"disk full while {doing}: free space on that filesystem or move --data-dir; "
            "nothing was acknowledged that is not on disk"
        )
    return StorageError(f"{doing} failed: {error}")
