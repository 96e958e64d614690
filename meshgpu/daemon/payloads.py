"""Task payloads (input tensors, results) on disk, and their msgpack encoding.

Inputs must be on every holder's disk before a task is acknowledged (design, data plane),
and results must wait on the holders until the client has them; both are stored here.
A small payload (up to ``INLINE_MAX_BYTES``) is a record of the journal, written without
an fsync of its own: the journal's group commit makes it durable together with the task
record written after it (one append and one shared fsync per batch; on this disk every
fsync costs about 4 ms whatever it syncs, so the count is what matters). A larger one
is a file per (task, kind), written to a scratch name, fsynced and renamed, so a file
that exists is complete. Rejected: every payload in the journal (the journal keeps its
live values in memory, so large tensors would pin memory), and every payload a file
(an fsync and a directory entry per payload: the larger part of the per-task latency
before this change).

Tensors are encoded as msgpack maps ``{name: {"dtype": str, "shape": [int], "data":
bytes}}`` with C-order little-endian data (strings and bfloat16: tensor_types.py). The
same encoding travels in TCP frames (the client API and holder-to-worker transfers) and
sits on disk, so a payload is moved with no re-encoding. Rejected alternative: ``.npz``
files are zip archives, which would mean a second encoding for the wire and a zip parser
on untrusted input; ``np.load`` of untrusted data also needs care with pickles.

A task group (docs/task-queue.md, "Task groups") stores its inputs as a msgpack list of
its members' tensor maps and its result as a list of per-member ``{"outputs": ...}`` or
``{"error": reason}``: still one payload per task, moved and stored like any other.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from meshgpu.core.tasks.result_push import takes_result
from meshgpu.daemon.background_release import SHARED as SHARED_RELEASE
from meshgpu.daemon.background_release import BackgroundRelease
from meshgpu.daemon.blobs import BlobWriter
from meshgpu.daemon.groups import MEMBER_RESULT
from meshgpu.daemon.journal import Journal, fsync_directory, storage_error
from meshgpu.errors import DecodeError, OtherAttemptKept, StorageError
from meshgpu.tensor_types import dtype_of_tag, dtype_tag, tensor_bytes, tensor_from_bytes

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
Tensors = dict[str, np.ndarray]
INLINE_MAX_BYTES = 16 * 1024
"""Payloads up to this size live in the journal (in memory and on disk), larger ones in files."""
INLINE_PREFIX = "~"
"""Journal keys of inline payloads start with this (task record keys start with a node id)."""


def inline_key(task_id: Any, kind: str) -> tuple[Any, ...]:
    """The journal key of an inline payload (``task_id``: a digest or (origin, sequence))."""
    parts = tuple(task_id) if isinstance(task_id, (tuple, list)) else (task_id,)
    return (INLINE_PREFIX + kind, *parts)


def is_inline_key(key: Any) -> bool:
    return isinstance(key, tuple) and bool(key) and str(key[0]).startswith(INLINE_PREFIX)


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The msgpack-ready form of named arrays."""
    encoded: dict[str, dict[str, Any]] = {}
    for name, array in tensors.items():
        array = np.asarray(array)
        encoded[name] = {
            "dtype": dtype_tag(array.dtype),
            "shape": list(array.shape),
            "data": bytes(tensor_bytes(array)),
        }
    return encoded


def decode_tensors(encoded: Any) -> Tensors:
    """Named arrays from their msgpack form; raises DecodeError on anything malformed."""
    if not isinstance(encoded, dict):
        raise DecodeError("tensors must be a map of name to {dtype, shape, data}")
    tensors: Tensors = {}
    for name, entry in encoded.items():
        try:
            tag = entry["dtype"]
            shape = tuple(int(n) for n in entry["shape"])
            data = entry["data"]
        except (KeyError, TypeError, ValueError) as error:
            raise DecodeError(f"tensor {name!r} is malformed: {error}") from None
        if not isinstance(data, bytes):
            raise DecodeError(f"tensor {name!r} has data that is not bytes")
        try:
            dtype = dtype_of_tag(tag)
        except DecodeError as error:
            raise DecodeError(f"tensor {name!r}: {error}") from None
        tensors[str(name)] = tensor_from_bytes(data, dtype, shape, f"tensor {name!r}")
    return tensors


def canonical_tensor_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The one byte form of named tensors (names sorted) whose sha256 is the input digest."""
    ordered = {name: tensors[name] for name in sorted(tensors)}
    return msgpack.packb(encode_tensors(ordered), use_bin_type=True)  # type: ignore[no-any-return]


def tensors_from_bytes(data: bytes | bytearray | memoryview) -> Tensors:
    """Inverse of :func:`canonical_tensor_bytes`; raises DecodeError on malformed bytes."""
    try:
        encoded = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise DecodeError(f"tensor payload is not msgpack: {error}") from None
    return decode_tensors(encoded)


def canonical_group_bytes(members: Sequence[Mapping[str, np.ndarray]]) -> bytes:
    """The one byte form of a task group's inputs: a msgpack list with each member's
    tensors in the form of :func:`canonical_tensor_bytes` (names sorted). Its sha256 is
    the group's input digest, as for an ordinary task's inputs."""
    encoded = [encode_tensors({name: m[name] for name in sorted(m)}) for m in members]
    return msgpack.packb(encoded, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise DecodeError(f"{what} is not msgpack: {error}") from None


def group_from_bytes(data: bytes) -> list[Tensors]:
    """Inverse of :func:`canonical_group_bytes`; raises DecodeError on malformed bytes."""
    encoded = _unpack(data, "group payload")
    if not isinstance(encoded, list) or not encoded:
        raise DecodeError("a group payload is a non-empty list of members' tensors")
    return [decode_tensors(member) for member in encoded]


MemberOutcome = Tensors | str
"""One member's outcome in a group result: its outputs, or its permanent error's reason."""


def group_result_bytes(outcomes: Sequence[MemberOutcome]) -> bytes:
    """A group's result: a msgpack list, per member ``{"outputs": tensors}`` (the form of
    :func:`encode_tensors`) or ``{"error": reason}`` for a member that failed alone."""
    encoded = [
        {"error": outcome} if isinstance(outcome, str) else {"outputs": encode_tensors(outcome)}
        for outcome in outcomes
    ]
    return msgpack.packb(encoded, use_bin_type=True)  # type: ignore[no-any-return]


def group_result_from_bytes(data: bytes) -> list[dict[str, Any]]:
    """The members' entries of a group result, each checked: ``{"outputs": <encoded
    tensors, decodable>}`` or ``{"error": str}``; raises DecodeError otherwise."""
    members = _unpack(data, "group result")
    if not isinstance(members, list) or not members:
        raise DecodeError("a group result is a non-empty list of members' outcomes")
    for member in members:
        if not isinstance(member, dict):
            raise DecodeError("a group result member is a map")
        if "outputs" in member:
            decode_tensors(member["outputs"])
        elif not isinstance(member.get("error"), str):
            raise DecodeError("a group result member has neither outputs nor an error")
    return members


def check_result_bytes(data: bytes) -> None:
    """Raise DecodeError unless ``data`` is a task's result: a tensor map
    (:func:`canonical_tensor_bytes`) or a group's result (:func:`group_result_bytes`)."""
    if isinstance(_unpack(data, "result payload"), list):
        group_result_from_bytes(data)
    else:
        tensors_from_bytes(data)


def task_file_stem(task_id: Any) -> str:
    """A file-name-safe, unambiguous stem for a task id (a string or (origin, seq))."""
    parts = task_id if isinstance(task_id, (tuple, list)) else (task_id,)
    return "~".join(_SAFE_NAME.sub(lambda m: f"%{ord(m.group()):02x}", str(p)) for p in parts)


def parse_task_file_stem(stem: str) -> tuple[str, ...]:
    """Inverse of :func:`task_file_stem`: the parts of the key, as strings."""
    return tuple(
        re.sub(r"%([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), part)
        for part in stem.split("~")
    )


_INPUTS = "inputs"
_RESULT = "result"
_RESULT_ATTEMPT = "result-attempt"
"""The file beside a result's that says which attempt's result it is."""


class PayloadStore:
    """Input and result tensors of the tasks this node holds, one file per (task, kind)."""

    def __init__(
        self,
        directory: Path,
        journal: Journal | None = None,
        release: BackgroundRelease = SHARED_RELEASE,
    ) -> None:
        self.directory = directory
        self.journal = journal
        self.release = release
        """Removes deleted payload files off the event loop (background_release.py)."""
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        for spilled in directory.glob(f"*.{MEMBER_RESULT}"):
            # A cache of the entry's, tracked only in memory (handlers.py, ``_spilled``)
            # and dropped when its group is collected: one left by a previous run would
            # never be. A client still fetching it gets StorageError and asks for the
            # member again, which stores it anew from the group's result on its holders.
            self.release.unlink(spilled)
        self._installing: dict[Any, tuple[int | None, int]] = {}
        """Task -> (attempt, count) of result installs under way here."""
        self._result_attempts: dict[Any, int] = {}
        """Which attempt's result of each task is installed here as a file, as read from
        its record or installed since (core/tasks/result_push.py, ``takes_result``); a
        result in the journal names its attempt in its own record (``_inline_result``)."""
        self._unsynced: set[Any] = set()
        """Tasks whose result file was installed without the directory's fsync (a small
        result's: ``install_result``); a refusal naming its attempt syncs it first
        (:meth:`sync_result`)."""
        self._result_lock = threading.Lock()
        """Held around a result's rename with the update of its attempt, and around a
        reader's open of the file with the look-up of its attempt: a range is always
        named by the attempt of the bytes it holds (``read_result_range``)."""
        for record in directory.glob(f"*.{_RESULT_ATTEMPT}"):
            self._settle_attempt_record(record)

    def _path(self, task_id: Any, kind: str) -> Path:
        return self.directory / f"{task_file_stem(task_id)}.{kind}"

    def put_bytes(self, task_id: Any, kind: str, data: bytes) -> None:
        """Store a payload durably (written to a scratch name, fsynced, renamed). The
        directory is not fsynced here: a payload this size (16 KiB up to a range) is
        stored on the acknowledgement's path of every such task, and the journal's fsync
        of the task record that follows it commits the rename with it on a journaling
        filesystem (ext4, XFS: their log is ordered). :meth:`install` syncs it."""
        path = self._path(task_id, kind)
        # A scratch name of its own: two writers of one payload (equal inputs submitted
        # at once, a result pushed twice) must not interleave in one file.
        scratch = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(scratch, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(scratch, path)
        except OSError as error:
            scratch.unlink(missing_ok=True)
            raise storage_error(error, f"storing {kind} of task {task_id}") from None

    def path(self, task_id: Any, kind: str) -> Path:
        """Where a payload stored as a file is (or would be)."""
        return self._path(task_id, kind)

    def writer(self, task_id: Any, kind: str, *, durable: bool = True) -> BlobWriter:
        """Receive a payload in ranges (blobs.py); :meth:`install` puts it in place.
        ``durable=False``: a worker's scratch copy, read once and never synced."""
        return BlobWriter(
            self.directory,
            task_file_stem(task_id) + f".{kind}",
            durable=durable,
            release=self.release,
        )

    def scratch(self, task_id: Any, kind: str) -> Path:
        """A fresh scratch name beside the payload's place (swept at start if left)."""
        path = self._path(task_id, kind)
        return path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")

    def install(self, scratch: Path, task_id: Any, kind: str) -> None:
        """Move a complete, fsynced scratch file into the payload's place, durably (call
        it in a worker thread: a directory's fsync may wait for the disk): the
        directory is fsynced after the rename, so the name survives a crash as the
        file's bytes do (without it, a copy the mesh counts on may be under its scratch
        name after a power loss, and swept at the next start)."""
        try:
            os.replace(scratch, self._path(task_id, kind))
            fsync_directory(self.directory)
        except OSError as error:
            scratch.unlink(missing_ok=True)
            raise storage_error(error, f"storing {kind} of task {task_id}") from None

    def result_attempt(self, task_id: Any) -> int | None:
        """The attempt whose result of task ``task_id`` is installed here; None when
        this node holds none, or one of an unknown attempt (a copy written before
        attempts were recorded)."""
        attempt = self._result_attempts.get(task_id)
        if attempt is not None:
            return attempt
        inline = self._inline_result(task_id)
        if inline is not None:
            return inline[1]
        attempt = self._recorded_attempt(task_id)
        if attempt is not None:  # not installed since the start: its record says
            self._result_attempts[task_id] = attempt
        return attempt

    def _recorded_attempt(self, task_id: Any, inode: int | None = None) -> int | None:
        """The attempt the record beside the result file names for the file there now
        (its lines are ``attempt inode``, the claim first, the result it replaces next:
        a crash between the record's write and the result's rename leaves the previous
        file, named by the second line); None without a file or a matching line.
        ``inode``: of a file a reader opened (else the one there now)."""
        try:
            if inode is None:
                inode = self._path(task_id, _RESULT).stat().st_ino
            lines = self._path(task_id, _RESULT_ATTEMPT).read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1] == str(inode):
                return int(parts[0])
        return None

    def _settle_attempt_record(self, record: Path) -> None:
        """At start: a record with no result file beside it (a crash before a first
        install's rename, or one mid-delete) goes; one whose first line does not name
        the file there (a crash before a later install's rename) keeps the line that
        does, or goes when none does."""
        stem = record.name.removesuffix(f".{_RESULT_ATTEMPT}")
        key = parse_task_file_stem(stem)
        attempt = self._recorded_attempt(key)
        try:
            if attempt is None:
                record.unlink(missing_ok=True)
                return
            inode = self._path(key, _RESULT).stat().st_ino
            if not record.read_text().startswith(f"{attempt} {inode}\n"):
                self._write_attempt_record(key, f"{attempt} {inode}\n")
        except (OSError, StorageError):
            return  # read again when asked; a leftover record names no file's inode

    @contextlib.contextmanager
    def claiming_result(self, task_id: Any, attempt: int | None) -> Iterator[None]:
        """Entered on the event loop right before attempt ``attempt``'s result of task
        ``task_id`` is installed here (the install inside: :meth:`install_result`,
        :meth:`store_small_result`). Raises OtherAttemptKept when this node keeps a newer
        attempt's result (an older attempt's bytes never replace it), and StorageError
        while another attempt's install of the task is under way here (two renames in
        flight would leave whichever landed last; the pusher tries again in its next
        round)."""
        self.check_result_attempt(task_id, attempt)
        busy = self._installing.get(task_id)
        self._installing[task_id] = (attempt, 1 + (busy[1] if busy else 0))
        try:
            yield
        finally:
            current = self._installing.pop(task_id, None)
            if current is not None and current[1] > 1:  # the same attempt's, again
                self._installing[task_id] = (current[0], current[1] - 1)

    def check_result_attempt(self, task_id: Any, attempt: int | None) -> None:
        """Raise if this node would refuse attempt ``attempt``'s result of task
        ``task_id``: OtherAttemptKept (with the attempt it keeps) when a newer attempt's
        is installed, StorageError while another attempt's install is under way."""
        busy = self._installing.get(task_id)
        if busy is not None and busy[0] != attempt:
            raise StorageError(
                f"this node is installing attempt {busy[0]}'s result of task {task_id}; "
                f"attempt {attempt}'s waits for it"
            )
        installed = self.result_attempt(task_id)
        if not takes_result(installed, attempt):
            assert installed is not None
            raise OtherAttemptKept(
                f"this node keeps attempt {installed}'s result of task {task_id}; attempt "
                f"{attempt}'s is older and not installed over it",
                installed,
            )

    def _write_attempt_record(self, task_id: Any, text: str) -> None:
        self.put_bytes(task_id, _RESULT_ATTEMPT, text.encode())

    def install_result(
        self, scratch: Path, task_id: Any, attempt: int | None, *, sync_directory: bool = True
    ) -> None:
        """:meth:`install` a result claimed by :meth:`claiming_result` (in a worker
        thread): the record of its attempt, naming the scratch file's inode (a rename
        keeps it), is written and synced first, with the file it replaces on its second
        line, so that after a crash at any point the record names the attempt of the
        file that is there (:meth:`_recorded_attempt`). The rename and the attempt
        readers are told are one step (``_result_lock``). ``sync_directory=False``: a
        small result, whose rename the journal's next fsync carries (:meth:`put_bytes`)."""
        path = self._path(task_id, _RESULT)
        previous = self.result_attempt(task_id)
        try:
            lines = f"{attempt} {os.stat(scratch).st_ino}\n" if attempt is not None else ""
            if previous is not None:  # a crash before the rename leaves this file
                with contextlib.suppress(FileNotFoundError):
                    lines += f"{previous} {path.stat().st_ino}\n"
            if attempt is None:  # a copy of no known attempt: no record names it
                self._path(task_id, _RESULT_ATTEMPT).unlink(missing_ok=True)
            else:
                self._write_attempt_record(task_id, lines)
            with self._result_lock:
                os.replace(scratch, path)
                if attempt is None:
                    self._result_attempts.pop(task_id, None)
                else:
                    self._result_attempts[task_id] = attempt
                self._unsynced.add(task_id)
            if sync_directory:
                self._sync_directory()
        except StorageError:  # the record's write
            scratch.unlink(missing_ok=True)
            raise
        except OSError as error:
            scratch.unlink(missing_ok=True)
            raise storage_error(error, f"storing the result of task {task_id}") from None

    def sync_result(self, task_id: Any) -> None:
        """Make the install of task ``task_id``'s result durable if it is not yet (in a
        worker thread): before a refusal names its attempt (``kept_attempt``), which the
        refused worker adopts, reporting this node as keeping it. Its record and file
        were synced, but their renames ride on the directory's fsync: a crash before it
        could lose the result a refusal already said was kept here."""
        if task_id in self._unsynced:
            try:
                self._sync_directory()
            except OSError as error:
                raise storage_error(error, f"syncing the result of task {task_id}") from None

    def _sync_directory(self) -> None:
        """fsync the directory: every result installed before it is durable."""
        with self._result_lock:
            renamed = set(self._unsynced)
        fsync_directory(self.directory)
        with self._result_lock:
            self._unsynced -= renamed

    def store_small_result(self, task_id: Any, data: bytes, attempt: int | None) -> None:
        """A result of one range as a file, durably, with its attempt's record (in a
        worker thread; claimed by :meth:`claiming_result`)."""
        scratch = self.scratch(task_id, _RESULT)
        try:
            with open(scratch, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            scratch.unlink(missing_ok=True)
            raise storage_error(error, f"storing the result of task {task_id}") from None
        self.install_result(scratch, task_id, attempt, sync_directory=False)

    def _inline_result(self, task_id: Any) -> tuple[bytes, int | None] | None:
        """A result kept in the journal and its attempt (None for one written before
        attempts were recorded with it)."""
        if self.journal is None:
            return None
        value = self.journal.get(inline_key(task_id, _RESULT))
        if isinstance(value, bytes):
            return value, None
        if (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], bytes)
            and (value[1] is None or isinstance(value[1], int))
        ):
            return value[0], value[1]
        return None

    def read_result_range(
        self, task_id: Any, offset: int, length: int
    ) -> tuple[bytes, int, int | None] | None:
        """``length`` bytes of the result from ``offset``, its size and the attempt whose
        bytes they are; None if this node holds no result of the task. The attempt is
        looked up with the file opened (``_result_lock``), so a result installed over
        it meanwhile never lends its attempt to the older bytes (a reader that pins
        one attempt across ranges and holders relies on it)."""
        inline = self._inline_result(task_id)
        if inline is not None:
            data, attempt = inline
            return data[offset : offset + length], len(data), attempt
        try:
            with self._result_lock:
                handle = open(self._path(task_id, _RESULT), "rb")  # noqa: SIM115
                attempt = self._result_attempts.get(task_id)
                if attempt is None:  # not installed since the start: its record says
                    attempt = self._recorded_attempt(task_id, os.fstat(handle.fileno()).st_ino)
            with handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(offset)
                return handle.read(length), size, attempt
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"cannot read the result of task {task_id}: {error}") from None

    def size(self, task_id: Any, kind: str) -> int | None:
        """The payload's size in bytes, or None if this node has no copy."""
        inline = self.get_memory(task_id, kind)
        if inline is not None:
            return len(inline)
        try:
            return self._path(task_id, kind).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"cannot read {kind} of task {task_id}: {error}") from None

    def read_range(self, task_id: Any, kind: str, offset: int, length: int) -> bytes | None:
        """``length`` bytes of the payload from ``offset`` (fewer at its end), or None if
        this node has no copy. Reads only that range of a file."""
        inline = self.get_memory(task_id, kind)
        if inline is not None:
            return inline[offset : offset + length]
        try:
            with open(self._path(task_id, kind), "rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"cannot read {kind} of task {task_id}: {error}") from None

    def put_inline(
        self, task_id: Any, kind: str, data: bytes, attempt: int | None = None
    ) -> int | None:
        """Append a small payload to the journal without syncing; returns the journal
        sequence number that must be synced before the payload may be relied upon, or
        None when it is too large (store it with :meth:`put_bytes` instead). Cheap enough
        for the event loop (a write to the page cache). A result goes with its
        ``attempt`` in the same record (``[data, attempt]``): replayed together, so its
        attempt survives a restart as a result file's record does (claimed by
        :meth:`claiming_result`)."""
        if self.journal is None or len(data) > INLINE_MAX_BYTES:
            return None
        if kind != _RESULT:
            return self.journal.write([(inline_key(task_id, kind), bytes(data))])
        seq = self.journal.write([(inline_key(task_id, kind), [bytes(data), attempt])])
        # Its attempt is read from its record (result_attempt); the map names files'
        # attempts only: a reader thread that missed this record and opened an older
        # attempt's file names its bytes by the file's attempt (read_result_range).
        self._result_attempts.pop(task_id, None)
        return seq

    def drop_inline_result(self, task_id: Any) -> None:
        """Forget a result kept in the journal (a result file of the task was installed
        since, which readers must find instead)."""
        if self.journal is not None:
            self.journal.write([], [inline_key(task_id, _RESULT)])

    def get_memory(self, task_id: Any, kind: str) -> bytes | None:
        """An inline payload, from memory (no disk access: fine on the event loop)."""
        if self.journal is None:
            return None
        if kind == _RESULT:
            inline = self._inline_result(task_id)
            return None if inline is None else inline[0]
        value = self.journal.get(inline_key(task_id, kind))
        return value if isinstance(value, bytes) else None

    def get_bytes(self, task_id: Any, kind: str) -> bytes | None:
        inline = self.get_memory(task_id, kind)
        if inline is not None:
            return inline
        try:
            return self._path(task_id, kind).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"cannot read {kind} of task {task_id}: {error}") from None

    def put_encoded(self, task_id: Any, kind: str, encoded: Mapping[str, Any]) -> None:
        """Store already-encoded tensors durably (fsynced before returning)."""
        self.put_bytes(task_id, kind, msgpack.packb(dict(encoded), use_bin_type=True))

    def put(self, task_id: Any, kind: str, tensors: Mapping[str, np.ndarray]) -> None:
        self.put_encoded(task_id, kind, encode_tensors(tensors))

    def get_encoded(self, task_id: Any, kind: str) -> dict[str, Any] | None:
        data = self.get_bytes(task_id, kind)
        if data is None:
            return None
        try:
            encoded = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError) as error:
            raise StorageError(f"stored {kind} of task {task_id} is corrupt: {error}") from None
        if not isinstance(encoded, dict):
            raise StorageError(f"stored {kind} of task {task_id} is corrupt")
        return encoded

    def get(self, task_id: Any, kind: str) -> Tensors | None:
        encoded = self.get_encoded(task_id, kind)
        return None if encoded is None else decode_tensors(encoded)

    def keys(self, kind: str) -> list[tuple[str, ...]]:
        """The keys (as string parts) of every stored payload of ``kind``."""
        keys = [
            parse_task_file_stem(path.name.removesuffix(f".{kind}"))
            for path in self.directory.glob(f"*.{kind}")
        ]
        if self.journal is not None:
            marker = INLINE_PREFIX + kind
            for key, _ in self.journal.items():
                if isinstance(key, tuple) and is_inline_key(key) and key[0] == marker:
                    keys.append(tuple(str(part) for part in key[1:]))
        return keys

    def input_files(self) -> list[tuple[str, float]]:
        """(digest, modification time) of every input payload stored as a file (an
        upload's or a fetched copy; inline ones belong to a journaled task)."""
        files = []
        for path in self.directory.glob(f"*.{_INPUTS}"):
            try:
                modified = path.stat().st_mtime
            except FileNotFoundError:
                continue
            files.append((path.name.removesuffix(f".{_INPUTS}"), modified))
        return files

    def touch(self, task_id: Any, kind: str) -> None:
        """Mark a stored payload as just used (its expiry counts from now)."""
        with contextlib.suppress(OSError):
            os.utime(self._path(task_id, kind))

    def has(self, task_id: Any, kind: str) -> bool:
        return self.get_memory(task_id, kind) is not None or self._path(task_id, kind).exists()

    def delete(self, task_id: Any, kind: str | None = None) -> None:
        """Drop one kind, or every kind, of a task's payloads. An inline payload's delete
        record is not synced: if it is lost in a crash, the orphan is swept at the next
        start (:meth:`sweep_inline`). A file leaves its place at once (a rename) and is
        unlinked in the release thread: invoked on the event loop, where the unlink of a
        GiB's file (seconds here) would stall the node."""
        if self.journal is not None:
            kinds = [kind] if kind is not None else [_INPUTS, _RESULT]
            self.journal.write([], [inline_key(task_id, k) for k in kinds])
        if kind in (None, _RESULT):
            self._result_attempts.pop(task_id, None)
            with self._result_lock:
                self._unsynced.discard(task_id)
        if kind is not None:
            self.release.unlink(self._path(task_id, kind))
            if kind == _RESULT:
                self._path(task_id, _RESULT_ATTEMPT).unlink(missing_ok=True)
            return
        stem = task_file_stem(task_id)
        for path in self.directory.glob(f"{stem}.*"):
            if path.name.rsplit(".", 1)[0] == stem:
                self.release.unlink(path)

    def sweep_inline(self, keep_inputs: set[str], keep_results: set[tuple[str, int]]) -> int:
        """Delete inline payloads no journaled task refers to (a delete lost in a crash);
        returns how many. Run once at start, after replay."""
        if self.journal is None:
            return 0
        orphans = []
        for key, _ in self.journal.items():
            if not isinstance(key, tuple) or not is_inline_key(key):
                continue
            kind, parts = key[0], key[1:]
            orphan_inputs = kind == INLINE_PREFIX + _INPUTS and parts[0] not in keep_inputs
            orphan_result = kind == INLINE_PREFIX + _RESULT and parts not in keep_results
            if orphan_inputs or orphan_result:
                orphans.append(key)
        if orphans:
            self.journal.write([], orphans)
        return len(orphans)
