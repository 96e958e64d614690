"""Tensor payloads larger than a frame: their canonical bytes in chunks, never whole.

A task's inputs and its result are one payload each, in the canonical form of
payloads.py (a msgpack map ``{name: {"dtype", "shape", "data"}}``, names sorted). A
payload up to one chunk travels inside one request, as it always did; a larger one
travels as a sequence of ranges of those same bytes (docs/daemon.md, "Large tensors"):

* the sender never builds the whole byte string: :class:`TensorBlob` yields the msgpack
  headers and views of the arrays' own memory, so a client holding a 1 GiB array sends
  it with one extra chunk in memory, and a worker writes its outputs to the payload
  store (:meth:`TensorBlob.write_to`) before pushing them;
* the receiver writes each range to a scratch file (:class:`BlobWriter`), hashing as it
  goes, and installs the file only once the sha256 and the layout check out, exactly as
  a model download does (modelstore.py);
* whoever needs the arrays reads the layout from the file's headers
  (:func:`read_layout`, which seeks over the data) and loads each array straight from
  the file (:func:`load_tensors`): one copy in memory, the arrays themselves.

msgpack's ``bin 32`` caps one tensor at 4 GiB - 1 bytes; a task may hold several.

Rejected: msgpack's streaming ``Unpacker`` over the whole file (it builds a ``bytes`` of
each tensor, a second copy of a 1 GiB array); memory-mapping results for the caller
(arrays backed by a file the client deletes); a second, raw wire format for big
payloads (two encodings to keep equal, and the input digest is defined on this one).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import mmap
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from meshgpu.daemon.background_release import SHARED as SHARED_RELEASE
from meshgpu.daemon.background_release import BackgroundRelease
from meshgpu.daemon.direct_writes import DirectRefused, DirectWriter, copy_without_gil
from meshgpu.daemon.journal import storage_error
from meshgpu.errors import DecodeError, DigestMismatchError, StorageError
from meshgpu.tensor_types import (
    STRING_LENGTH_BYTES,
    dtype_of_tag,
    dtype_tag,
    is_string,
    payload_nbytes,
    tensor_bytes,
    tensor_from_bytes,
)

CHUNK_BYTES = 16 << 20
"""Largest range of a payload in one request (with the default 64 MiB frame limit): 64
round trips a GiB, where 4 MiB ranges made 256, each of which waits for two processes
to be scheduled on a loaded machine."""
MIN_CHUNK_BYTES = 16 << 10
MAX_TENSOR_BYTES = (1 << 32) - 1
"""msgpack ``bin 32``: the largest one tensor's data may be."""
_HEADER_WINDOW = 64 << 10
_HEADER_WINDOW_MAX = 1 << 20


def chunk_bytes(max_frame_bytes: int) -> int:
    """The chunk size that fits frames of ``max_frame_bytes`` with room for the envelope."""
    return max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, max_frame_bytes // 4))


def _bin_header(length: int) -> bytes:
    """msgpack's header of a ``bin`` of ``length`` bytes, as ``packb`` writes it."""
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    if length <= MAX_TENSOR_BYTES:
        return b"\xc6" + length.to_bytes(4, "big")
    raise DecodeError(
        f"a tensor of {length} bytes is larger than one tensor may be ({MAX_TENSOR_BYTES} "
        "bytes); split it into several inputs or tasks"
    )


def tensor_nbytes(tensors: Mapping[str, Any]) -> int:
    """Bytes of array data in ``tensors`` (what ``max_task_bytes`` limits; a string
    tensor counts its encoded bytes)."""
    return sum(payload_nbytes(np.asarray(array)) for array in tensors.values())


class TensorBlob:
    """The canonical bytes of named arrays (payloads.canonical_tensor_bytes), as a
    sequence of small headers and views of the arrays' memory (no copy of the data,
    unless an array was not little-endian and C-contiguous)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        packer = msgpack.Packer(use_bin_type=True)
        pieces: list[bytes | memoryview] = [packer.pack_map_header(len(tensors))]
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for name in sorted(tensors):
            array = np.asarray(tensors[name])
            data = tensor_bytes(array)
            pieces.append(
                packer.pack(name)
                + packer.pack_map_header(3)
                + packer.pack("dtype")
                + packer.pack(dtype_tag(array.dtype))
                + packer.pack("shape")
                + packer.pack(list(array.shape))
                + packer.pack("data")
                + _bin_header(len(data))
            )
            pieces.append(data)
            shapes.append((name, tuple(array.shape)))
        self.pieces = pieces
        self.size = sum(len(piece) for piece in pieces)
        self.shapes = tuple(shapes)
        self._digest: str | None = None

    def digest(self) -> str:
        """The sha256 of the bytes (the input digest of a task with these inputs);
        computed once (about half a second a GiB: call it in a thread)."""
        if self._digest is None:
            hasher = hashlib.sha256()
            for piece in self.pieces:
                hasher.update(piece)
            self._digest = hasher.hexdigest()
        return self._digest

    def known_digest(self) -> str | None:
        """The sha256 if it was computed (:meth:`digest`) or noted (:meth:`note_digest`)."""
        return self._digest

    def note_digest(self, digest: str) -> None:
        """Remember the sha256, computed elsewhere (while the bytes were sent)."""
        self._digest = digest

    def chunks(self, size: int) -> Iterator[bytes]:
        """The bytes in order, ``size`` at a time (the last one shorter)."""
        buffer = bytearray()
        for piece in self.pieces:
            view = memoryview(piece)
            while view:
                take = size - len(buffer)
                buffer += view[:take]
                view = view[take:]
                if len(buffer) >= size:
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            yield bytes(buffer)

    def read(self, offset: int, length: int) -> bytearray:
        """``length`` bytes from ``offset`` (fewer at the end): a range to send, copied
        once into a buffer of its own (numpy's copy, without the GIL: call it in a worker
        thread, :func:`~meshgpu.daemon.transfers.read_blob`, for a range of 16 MiB)."""
        from meshgpu.daemon.framing import unfilled_bytearray

        length = max(0, min(length, self.size - offset))
        out = unfilled_bytearray(length)
        target = memoryview(out)
        filled = 0
        start = 0
        for piece in self.pieces:
            end = start + len(piece)
            if end > offset and start < offset + length:
                low = max(offset - start, 0)
                part = memoryview(piece).cast("B")[low : low + length - filled]
                copy_without_gil(target[filled : filled + len(part)], part)
                filled += len(part)
            start = end
            if filled >= length:
                break
        return out

    def range_view(self, offset: int, length: int) -> memoryview | None:
        """The range as a view of the array's memory (no copy: a push or an upload sends
        it from there), or None when it spans two pieces (a header and the data after
        it: the first range of every payload), which :meth:`read` copies."""
        length = max(0, min(length, self.size - offset))
        start = 0
        for piece in self.pieces:
            end = start + len(piece)
            if start <= offset and offset + length <= end:
                return memoryview(piece).cast("B")[offset - start : offset - start + length]
            if end > offset:
                break
            start = end
        return None

    def view(self, offset: int, length: int) -> bytearray | memoryview:
        """:meth:`range_view`, or :meth:`read` where the range spans two pieces."""
        view = self.range_view(offset, length)
        return self.read(offset, length) if view is None else view

    def write_to(self, path: Path) -> str:
        """Write the bytes to ``path`` (fsynced: directly where the filesystem allows,
        as a durable copy received is, :class:`BlobWriter`); returns their sha256."""
        writer = BlobWriter(path.parent, path.name, durable=True, path=path)
        writer.reserve(self.size)
        for piece in self.pieces:
            view = memoryview(piece).cast("B")
            for at in range(0, len(view), CHUNK_BYTES):
                writer.write(writer.size, view[at : at + CHUNK_BYTES])
        writer.commit(None)
        return writer.hexdigest()


def start_writeback(descriptor: int, offset: int, length: int) -> None:
    """Have the kernel start writing ``length`` bytes at ``offset`` of a file to disk now,
    without waiting: the fsync that makes the file durable then finds most of it
    written. Linux's ``posix_fadvise(DONTNEED)`` starts the writeback of the dirty pages
    of the range and drops only its clean ones, which pages just written are not
    (PostgreSQL's ``pg_flush_data`` does the same where it lacks ``sync_file_range``,
    which Python does not offer). Where the call is missing it is skipped."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):  # advice: a file that takes none is still written
            advise(descriptor, offset, length, os.POSIX_FADV_DONTNEED)


def allocate(descriptor: int, size: int) -> bool:
    """Give a file being written its ``size`` bytes of disk now (``posix_fallocate``);
    False where the filesystem or platform cannot (the file then grows as it is
    written). A disk without room raises OSError (ENOSPC)."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return False
    try:
        os.posix_fallocate(descriptor, 0, size)
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise
    return True


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor's data lies in a payload file."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_layout(path: Path) -> list[TensorSlot]:
    """The tensors of a canonical payload file, checked as ``decode_tensors`` checks a
    decoded one (and: names sorted and distinct, keys in canonical order, no byte left
    over); reads only the headers. Raises DecodeError for anything else (a task group's
    list, garbage)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return parse_layout(_reader(handle), size)
    except OSError as error:
        raise StorageError(f"cannot read {path.name}: {error.strerror or error}") from None


def _reader(handle: BinaryIO) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        handle.seek(offset)
        return handle.read(length)

    return read_at


def parse_layout(read_at: Callable[[int, int], bytes], size: int) -> list[TensorSlot]:
    """:func:`read_layout` over any ``read_at(offset, length)`` of ``size`` bytes."""
    unpacker, _ = _window(read_at, 0, _HEADER_WINDOW)
    try:
        count = unpacker.read_map_header()
    except (ValueError, msgpack.OutOfData) as error:
        raise DecodeError(f"payload is not a map of tensors: {error}") from None
    position = unpacker.tell()
    slots: list[TensorSlot] = []
    window = _HEADER_WINDOW
    while len(slots) < count:
        unpacker, raw = _window(read_at, position, window)
        try:
            slot = _parse_slot(unpacker, raw, position)
        except msgpack.OutOfData:
            if window >= _HEADER_WINDOW_MAX or position + window >= size:
                raise DecodeError(f"payload ends inside tensor {len(slots)}'s header") from None
            window *= 4
            continue
        window = _HEADER_WINDOW
        if slots and slot.name <= slots[-1].name:
            raise DecodeError("payload tensors are not in canonical order (names sorted, once)")
        if slot.offset + slot.nbytes > size:
            raise DecodeError(
                f"tensor {slot.name!r} needs {slot.nbytes} bytes at {slot.offset}, the payload "
                f"has {size}"
            )
        slots.append(slot)
        position = slot.offset + slot.nbytes
    if position != size:
        raise DecodeError(f"payload has {size - position} bytes after its last tensor")
    return slots


def _window(
    read_at: Callable[[int, int], bytes], position: int, length: int
) -> tuple[msgpack.Unpacker, bytes]:
    raw = read_at(position, length)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=2 * length)
    unpacker.feed(raw)
    return unpacker, raw


def _parse_slot(unpacker: msgpack.Unpacker, raw: bytes, position: int) -> TensorSlot:
    """One tensor's header at the start of ``raw`` (read at ``position``)."""
    try:
        name = unpacker.unpack()
        fields = unpacker.read_map_header()
        keys = []
        values: list[Any] = []
        for _ in range(2):
            keys.append(unpacker.unpack())
            values.append(unpacker.unpack())
        keys.append(unpacker.unpack())
    except ValueError as error:
        raise DecodeError(f"payload tensor header is malformed: {error}") from None
    if not isinstance(name, str) or fields != 3 or keys != ["dtype", "shape", "data"]:
        raise DecodeError(
            f"payload tensor {name!r} is not {{dtype, shape, data}} in canonical order"
        )
    at = unpacker.tell()
    if at >= len(raw):
        raise msgpack.OutOfData()
    marker = raw[at]
    width = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(marker)
    if width is None:
        raise DecodeError(f"tensor {name!r}: data is not bytes")
    if at + 1 + width > len(raw):
        raise msgpack.OutOfData()
    nbytes = int.from_bytes(raw[at + 1 : at + 1 + width], "big")
    try:
        shape = tuple(int(n) for n in values[1])
    except (TypeError, ValueError) as error:
        raise DecodeError(f"tensor {name!r} is malformed: {error}") from None
    try:
        dtype = dtype_of_tag(values[0])
    except DecodeError as error:
        raise DecodeError(f"tensor {name!r}: {error}") from None
    # A string tensor's size depends on its elements: checked when they are decoded
    # (tensor_types.decode_strings); here only that each element's length fits.
    count = math.prod(shape)
    expected = count * (STRING_LENGTH_BYTES if is_string(dtype) else dtype.itemsize)
    if any(n < 0 for n in shape) or (expected > nbytes if is_string(dtype) else expected != nbytes):
        raise DecodeError(
            f"tensor {name!r}: shape {list(shape)} of {dtype} needs {expected} bytes, got {nbytes}"
        )
    return TensorSlot(name, dtype, shape, position + at + 1 + width, nbytes)


def load_tensors(path: Path, slots: list[TensorSlot] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a payload file (layout read if not given), each read straight from
    the file into its own array."""
    slots = read_layout(path) if slots is None else slots
    tensors: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as handle:
            for slot in slots:
                handle.seek(slot.offset)
                if is_string(slot.dtype):
                    data = handle.read(slot.nbytes)
                    if len(data) != slot.nbytes:
                        raise DecodeError(f"tensor {slot.name!r} is cut short in {path.name}")
                    tensors[slot.name] = tensor_from_bytes(
                        data, slot.dtype, slot.shape, f"tensor {slot.name!r}"
                    )
                    continue
                array = fresh_array(slot.shape, slot.dtype)
                if read_into(handle, array) != slot.nbytes:
                    raise DecodeError(f"tensor {slot.name!r} is cut short in {path.name}")
                tensors[slot.name] = array
    except OSError as error:
        raise StorageError(f"cannot read {path.name}: {error.strerror or error}") from None
    return tensors


SMALL_PAGES_BYTES = 4 << 20
"""An array received or loaded of at least this size is made by :func:`fresh_array`."""


def fresh_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """An uninitialised array that a payload is about to be copied into, once: a large
    one is an anonymous mapping of its own advised ``MADV_NOHUGEPAGE``, whose pages the
    filler populates a range at a time just before it copies into them
    (:func:`populate`). numpy advises huge pages for every array of 4 MiB or
    more, and on the project's VM (transparent huge pages on ``madvise``, the kernel
    compacting memory to find each 2 MiB page at its first touch) filling a fresh 1 GiB
    array that way took 2.1-2.5 CPU s and 4-9 s, against 0.6-0.8 CPU s and 1.3-2.8 s with
    small pages (fresh processes, read from the page cache or copied from memory;
    docs/daemon.md). An array written once and then read once gains nothing from huge
    pages' fewer TLB misses. The mapping is unmapped when the array goes.

    The mapping is private (``MAP_PRIVATE``): Python's anonymous ``mmap`` is shared by
    default, i.e. shared memory (shmem), whose every page fault goes through a page
    cache of its own and whose ``munmap`` truncates it. Filling a fresh 1 GiB mapping a
    range at a time (populated, then copied) took 0.66-0.76 system CPU s private and
    1.34-1.53 shared, and its ``munmap`` 0.14-0.29 s against 0.71-0.92 s, three of each
    alternated on the project's VM at load 6."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    advise = getattr(mmap, "MADV_NOHUGEPAGE", None)
    private = getattr(mmap, "MAP_PRIVATE", None)
    if nbytes < SMALL_PAGES_BYTES or advise is None or private is None:
        return np.empty(shape, dtype)
    memory = mmap.mmap(-1, nbytes, flags=private | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # advice: a kernel without THP takes none
        memory.madvise(advise)
    return np.frombuffer(memory, dtype, count).reshape(shape)


MADV_POPULATE_WRITE = 23
"""Linux 5.14's ``madvise`` advice that faults a range in, writable, at once (Python
3.11's mmap module does not name it)."""


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    import ctypes
    import ctypes.util

    if not hasattr(os, "sched_getaffinity"):  # not Linux: no MADV_POPULATE_WRITE
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    madvise = libc.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_MADVISE = _libc_madvise()


def populate(array: np.ndarray, start: int, nbytes: int) -> None:
    """Fault in bytes ``start`` to ``start + nbytes`` of a fresh array (from
    :func:`fresh_array`) in one call, just before they are filled: one
    ``madvise(MADV_POPULATE_WRITE)`` instead of a page fault per 4 KiB page. Filling a
    fresh 1 GiB mapping from memory took 1.72-1.81 CPU s faulted page by page and
    1.35-1.41 CPU s populated first, on the project's VM (docs/daemon.md). A range at a
    time, as the bytes arrive: the whole array at once would put a GiB's populate before
    its first range. Called through ctypes, which releases the GIL (the mmap module's
    ``madvise`` holds it for the whole call, seconds for a GiB on a loaded machine: the
    event loop would stall). Small arrays (numpy's own memory) and kernels before 5.14,
    which refuse the advice, fault their pages as they are written."""
    if _MADVISE is None or array.nbytes < SMALL_PAGES_BYTES:
        return
    address = array.ctypes.data + start
    aligned = address - address % mmap.PAGESIZE  # madvise takes page-aligned addresses
    _MADVISE(aligned, nbytes + address - aligned, MADV_POPULATE_WRITE)


def read_into(handle: io.BufferedReader, array: np.ndarray) -> int:
    """Fill a fresh ``array`` from ``handle``'s position, ``CHUNK_BYTES`` a call, each
    range populated first; the bytes read (fewer at the end of the file)."""
    target = array.reshape(-1).view(np.uint8).data
    filled = 0
    while filled < len(target):
        populate(array, filled, min(CHUNK_BYTES, len(target) - filled))
        count = handle.readinto(target[filled : filled + CHUNK_BYTES])
        if not count:
            break
        filled += count
    return filled


class TensorReceiver:
    """Receives a payload of named tensors in ranges, in order, straight into the arrays
    (a client's result: no scratch file written and read back). Each tensor's header is
    parsed as it arrives and checked as :func:`read_layout` checks a file's, and its
    array is allocated then, never larger than what the announced size leaves; the bytes
    after a header are copied into that array. :meth:`tensors` hands them over once the
    last byte came. ``hashed``: the bytes are hashed as they come (:meth:`hexdigest`),
    for a copy that must match a digest (a worker's inputs)."""

    def __init__(
        self, *, hashed: bool = False, release: BackgroundRelease = SHARED_RELEASE
    ) -> None:
        self._hash = hashlib.sha256() if hashed else None
        self._release = release
        self.size = 0
        self._announced: int | None = None
        self._pending = bytearray()
        """Header bytes received but not yet parsed (a header split across ranges)."""
        self._position = 0
        """Bytes of the payload consumed by headers and data so far."""
        self._count: int | None = None
        self._tensors: dict[str, np.ndarray] = {}
        self._filling: tuple[memoryview, int, np.ndarray | None] | None = None
        """The array being received (as bytes), how much of it came, and the array (a
        fresh one, populated a range at a time; None for a string tensor's bytes)."""
        self._strings: dict[str, tuple[bytearray, TensorSlot]] = {}
        """String tensors' bytes, decoded by :meth:`tensors`."""

    def reserve(self, size: int) -> None:
        """The payload's size, as its sender announced it (the bound of every array)."""
        self._announced = size

    @property
    def announced(self) -> int:
        """The size :meth:`reserve` announced (0 if none was)."""
        return self._announced or 0

    def abort(self) -> None:
        """Give the arrays up (a failed transfer, a warm copy no run took): they are
        freed in the release thread, not by the caller (on the event loop, a GiB's
        ``munmap`` stalled the node for seconds at load: background_release.py)."""
        tensors, self._tensors = self._tensors, {}
        self._filling = None  # its view of an array: gone before the thread frees it
        self._strings = {}
        self._release.empty(tensors)

    def write(self, offset: int, chunk: bytes | bytearray | memoryview) -> None:
        if offset != self.size:
            raise DecodeError(f"range at {offset} sent, {self.size} expected; start again at 0")
        view = memoryview(chunk).cast("B")
        if self._hash is not None:
            self._hash.update(view)
        self.size += len(view)
        while view:
            if self._filling is not None:
                target, filled, array = self._filling
                take = min(len(view), len(target) - filled)
                if array is not None:
                    populate(array, filled, take)
                copy_without_gil(target[filled : filled + take], view[:take])
                view = view[take:]
                self._position += take
                filled += take
                self._filling = None if filled == len(target) else (target, filled, array)
            elif self._count is not None and len(self._tensors) == self._count:
                raise DecodeError(f"payload has {len(view)} bytes after its last tensor")
            else:
                view = view[self._header(view) :]

    def _header(self, view: memoryview) -> int:
        """Parse the next header from the pending bytes and ``view``; returns how many
        bytes of ``view`` it used (all it took when the header is still incomplete)."""
        taken = min(len(view), _HEADER_WINDOW)
        raw = bytes(self._pending) + bytes(view[:taken])
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=2 * len(raw))
        unpacker.feed(raw)
        try:
            if self._count is None:
                try:
                    self._count = int(unpacker.read_map_header())
                except ValueError as error:
                    raise DecodeError(f"payload is not a map of tensors: {error}") from None
                used = int(unpacker.tell())
            else:
                slot = _parse_slot(unpacker, raw, self._position)  # raw starts there
                used = slot.offset - self._position
                self._start(slot)
        except msgpack.OutOfData:
            if len(raw) >= _HEADER_WINDOW_MAX:
                raise DecodeError(f"tensor {len(self._tensors)}'s header is too long") from None
            self._pending = bytearray(raw)
            return taken
        from_view = used - len(self._pending)
        self._position += used
        self._pending = bytearray()
        return from_view

    def _start(self, slot: TensorSlot) -> None:
        if self._tensors and slot.name <= next(reversed(self._tensors)):
            raise DecodeError("payload tensors are not in canonical order (names sorted, once)")
        if self._announced is not None and slot.offset + slot.nbytes > self._announced:
            raise DecodeError(
                f"tensor {slot.name!r} needs {slot.nbytes} bytes at {slot.offset}, the payload "
                f"has {self._announced}"
            )
        if is_string(slot.dtype):  # its bytes first, decoded once they all came
            encoded = bytearray(slot.nbytes)
            self._strings[slot.name] = (encoded, slot)
            self._tensors[slot.name] = np.empty(0, slot.dtype)
            if slot.nbytes:
                self._filling = (memoryview(encoded), 0, None)
            return
        array = fresh_array(slot.shape, slot.dtype)
        self._tensors[slot.name] = array
        if slot.nbytes:
            self._filling = (array.reshape(-1).view(np.uint8).data, 0, array)

    def hexdigest(self) -> str:
        """The sha256 of the bytes received (a receiver made with ``hashed``)."""
        assert self._hash is not None, "made without hashed=True"
        return self._hash.hexdigest()

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays, once every byte came; DecodeError if the payload ended early."""
        if (
            self._count is None
            or len(self._tensors) != self._count
            or self._filling is not None
            or self._pending
        ):
            raise DecodeError(f"payload ends inside tensor {len(self._tensors)}")
        if self._announced is not None and self.size != self._announced:
            raise DecodeError(f"payload was announced as {self._announced} bytes, got {self.size}")
        for name, (encoded, slot) in self._strings.items():
            self._tensors[name] = tensor_from_bytes(
                encoded, slot.dtype, slot.shape, f"tensor {name!r}"
            )
        self._strings.clear()
        return self._tensors


class BlobWriter:
    """Receives one payload in ranges, in order, into a scratch file beside its final
    place, hashing as it goes; :meth:`commit` checks the sha256 and returns the file.
    ``durable``: a copy the mesh counts on has each
    range's writeback started as it is written (:func:`start_writeback`), so the disk
    writes while the network and the hash work and the fsync of :meth:`commit` waits for
    the last ranges only."""

    def __init__(
        self,
        directory: Path,
        stem: str,
        *,
        durable: bool = False,
        path: Path | None = None,
        release: BackgroundRelease = SHARED_RELEASE,
    ) -> None:
        self.path = path if path is not None else directory / f"{stem}.{secrets.token_hex(4)}.tmp"
        self._release = release
        """Where an aborted copy's file goes (its unlink frees up to a GiB of blocks:
        seconds here, never on the event loop)."""
        try:
            self._handle = open(self.path, "wb")  # noqa: SIM115 (closed in commit/abort)
        except OSError as error:
            raise storage_error(error, "storing a payload") from None
        self._hash = hashlib.sha256()
        self._durable = durable
        self._reserved = 0
        self.size = 0
        self._direct: DirectWriter | None = None
        if durable:
            try:
                self._direct = DirectWriter.open(self.path)
            except OSError as error:
                self.abort()
                raise storage_error(error, "storing a payload") from None

    def reserve(self, size: int) -> None:
        """Allocate the payload's ``size`` bytes on disk before they arrive: a disk that
        cannot hold them refuses now (DiskFullError), not after most of a GiB moved, and
        the file gets its blocks in one piece. :meth:`commit` cuts what was not written."""
        try:
            if allocate(self._handle.fileno(), size):
                self._reserved = size
        except OSError as error:
            self.abort()
            raise storage_error(error, "reserving room for a payload") from None

    def write(self, offset: int, chunk: bytes | bytearray | memoryview) -> None:
        if offset != self.size:
            raise DecodeError(f"range at {offset} sent, {self.size} expected; start again at 0")
        try:
            self._store(offset, chunk)
        except OSError as error:
            self.abort()
            raise storage_error(error, "storing a payload") from None
        self._hash.update(chunk)
        self.size += len(chunk)

    def _store(self, offset: int, chunk: bytes | bytearray | memoryview) -> None:
        """Write one range to the file: directly (a durable copy, where the filesystem
        takes it), else buffered with its writeback started at once."""
        if self._direct is not None:
            try:
                self._direct.write(chunk)
                return
            except DirectRefused as refused:  # buffered from here on
                self._direct.close()
                self._direct = None
                staged_to = refused.offset + len(refused.data)  # the rest of chunk: unstaged
                self._handle.seek(refused.offset)
                self._handle.write(refused.data)
                self._handle.write(memoryview(chunk).cast("B")[staged_to - offset :])
                return
        self._handle.write(chunk)
        if self._durable:
            self._handle.flush()
            start_writeback(self._handle.fileno(), offset, len(chunk))

    def hexdigest(self) -> str:
        """The sha256 of the bytes written so far."""
        return self._hash.hexdigest()

    def commit(self, sha256: str | None, *, durable: bool = True) -> Path:
        """Check the bytes against ``sha256`` (if given) and, if ``durable`` (a copy the
        mesh counts on, not a scratch copy read once), fsync; the caller installs or
        reads the file."""
        actual = self._hash.hexdigest()
        if sha256 is not None and actual != sha256:
            self.abort()
            raise DigestMismatchError(
                f"payload received hashes to {actual[:12]}, the sender said {sha256[:12]}"
            )
        try:
            self._handle.flush()
            if self._direct is not None:
                self._direct.finish(self.size)
                self._direct.close()
                self._direct = None
            elif self._reserved > self.size:
                os.ftruncate(self._handle.fileno(), self.size)
            if durable:
                os.fsync(self._handle.fileno())
            self._handle.close()
        except DirectRefused as refused:  # the last block: written buffered
            if self._direct is not None:  # finish waited for its thread: safe to close
                self._direct.close()
            self._direct = None
            try:
                self._handle.seek(refused.offset)
                self._handle.write(refused.data[: self.size - refused.offset])
                self._handle.flush()
                os.ftruncate(self._handle.fileno(), self.size)
                if durable:
                    os.fsync(self._handle.fileno())
                self._handle.close()
            except OSError as error:
                self.abort()
                raise storage_error(error, "storing a payload") from None
        except OSError as error:
            self.abort()
            raise storage_error(error, "storing a payload") from None
        return self.path

    def abort(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        # close() flushes what is buffered: on a full disk it fails again (ENOSPC), and
        # must not hide the error being reported nor keep the partial file.
        with contextlib.suppress(OSError):
            self._handle.close()
        self._release.unlink(self.path, rename=False)
