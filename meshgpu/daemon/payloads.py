"""Task payloads (input tensors, results) on disk, and their msgpack encoding.

Inputs must be on every holder's disk before a task is acknowledged (design, data plane),
and results must wait on the holders until the client has them; both are stored here,
one file per (task, kind), written to a scratch name, fsynced and renamed, so a file
that exists is complete.

Tensors are encoded as msgpack maps ``{name: {"dtype": str, "shape": [int], "data":
bytes}}`` with C-order little-endian data. The same encoding travels in TCP frames (the
client API and holder-to-worker transfers) and sits on disk, so a payload is moved with
no re-encoding. Rejected alternative: ``.npz`` files are zip archives, which would mean
a second encoding for the wire and a zip parser on untrusted input; ``np.load`` of
untrusted data also needs care with pickles.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from meshgpu.daemon.journal import storage_error
from meshgpu.errors import DecodeError, StorageError

_ALLOWED_KINDS = ("b", "i", "u", "f", "c")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
Tensors = dict[str, np.ndarray]


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The msgpack-ready form of named arrays."""
    encoded: dict[str, dict[str, Any]] = {}
    for name, array in tensors.items():
        array = np.asarray(array)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        encoded[name] = {
            "dtype": little.dtype.str,
            "shape": list(little.shape),
            "data": np.ascontiguousarray(little).tobytes(),
        }
    return encoded


def decode_tensors(encoded: Any) -> Tensors:
    """Named arrays from their msgpack form; raises DecodeError on anything malformed."""
    if not isinstance(encoded, dict):
        raise DecodeError("tensors must be a map of name to {dtype, shape, data}")
    tensors: Tensors = {}
    for name, entry in encoded.items():
        try:
            dtype = np.dtype(entry["dtype"])
            shape = tuple(int(n) for n in entry["shape"])
            data = entry["data"]
        except (KeyError, TypeError, ValueError) as error:
            raise DecodeError(f"tensor {name!r} is malformed: {error}") from None
        if dtype.kind not in _ALLOWED_KINDS or not isinstance(data, bytes):
            raise DecodeError(f"tensor {name!r} has unsupported dtype {dtype} or data")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if any(n < 0 for n in shape) or expected != len(data):
            raise DecodeError(
                f"tensor {name!r}: shape {list(shape)} of {dtype} needs {expected} bytes, "
                f"got {len(data)}"
            )
        tensors[str(name)] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return tensors


def canonical_tensor_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The one byte form of named tensors (names sorted) whose sha256 is the input digest."""
    ordered = {name: tensors[name] for name in sorted(tensors)}
    return msgpack.packb(encode_tensors(ordered), use_bin_type=True)  # type: ignore[no-any-return]


def tensors_from_bytes(data: bytes) -> Tensors:
    """Inverse of :func:`canonical_tensor_bytes`; raises DecodeError on malformed bytes."""
    try:
        encoded = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise DecodeError(f"tensor payload is not msgpack: {error}") from None
    return decode_tensors(encoded)


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


class PayloadStore:
    """Input and result tensors of the tasks this node holds, one file per (task, kind)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)

    def _path(self, task_id: Any, kind: str) -> Path:
        return self.directory / f"{task_file_stem(task_id)}.{kind}"

    def put_bytes(self, task_id: Any, kind: str, data: bytes) -> None:
        """Store a payload durably (written to a scratch name, fsynced, renamed)."""
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

    def get_bytes(self, task_id: Any, kind: str) -> bytes | None:
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
        return [
            parse_task_file_stem(path.name.removesuffix(f".{kind}"))
            for path in self.directory.glob(f"*.{kind}")
        ]

    def has(self, task_id: Any, kind: str) -> bool:
        return self._path(task_id, kind).exists()

    def delete(self, task_id: Any, kind: str | None = None) -> None:
        """Drop one kind, or every kind, of a task's payloads."""
        if kind is not None:
            self._path(task_id, kind).unlink(missing_ok=True)
            return
        stem = task_file_stem(task_id)
        for path in self.directory.glob(f"{stem}.*"):
            if path.name.rsplit(".", 1)[0] == stem:
                path.unlink(missing_ok=True)
