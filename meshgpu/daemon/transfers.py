"""Moving one payload between two nodes in ranges (blobs.py has the bytes' form).

Both directions are plain requests, one range each, so no side holds more than a window
of a transfer in memory and a receiver that is slower than the network simply answers
later (no flow control to get wrong):

* pulling (``get_inputs``/``get_result`` with ``offset`` and ``length``): the answer is
  ``{"data": bytes, "size": total}``; the first range says how large the payload is, and
  a payload that fits in it is handled in memory exactly as before;
* pushing (``put_inputs``/``put_result`` with ``offset``, ``data`` and ``more``): the
  receiver appends each range to a scratch file and, on the last one (``more`` false,
  with ``sha256``), checks the bytes and installs the file.

Up to ``WINDOW`` ranges of one transfer are in flight at once (docs/daemon.md, "Ranges in
flight"): a puller asks for the next ranges while it writes and hashes the one before, in
order; a pusher sends the first range alone (it starts the upload, and its answer may
say the payload is there already), then keeps ``WINDOW`` ranges unanswered, and the
receiver writes them in the order of their offsets whatever order their requests are
handled in (peer_ops.py). With one range at a time every range waited for a round trip
through two processes' schedulers and for the receiver's disk; with a window the
network, the hashing and the disk of one transfer overlap. A broken transfer starts again
at 0 from the next source (a range of a file that vanished is an error, never a short
read taken for the end), and the receiver checks the whole payload's sha256 before it
installs it. Rejected: a stream of ``more`` responses to one request (the requester's
connection buffers responses without bound, so a slow disk would pile up the whole tensor
in memory); resuming at the last offset on another source (the sources are independent
copies; starting again keeps the hash check simple); writing ranges as they arrive at
their offsets (``pwrite``) and hashing afterwards (a second pass over a 1 GiB file: the
running hash needs the bytes in order, and the window keeps the reordering in memory
small).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from meshgpu.daemon.auth.envelope import Buffer
from meshgpu.daemon.background_release import SHARED as SHARED_RELEASE
from meshgpu.daemon.blobs import TensorBlob, load_tensors
from meshgpu.daemon.payloads import tensors_from_bytes
from meshgpu.errors import DecodeError

WINDOW = 4
"""Ranges of one transfer in flight at once: 64 MiB of 16 MiB ranges, a bounded part of
the memory target (a tensor plus half of it) for any tensor larger than a range."""

RangeCall = Callable[[int, int], Awaitable[dict[str, Any]]]
"""``(offset, length)`` -> one range answer ``{"data", "size"}`` of a pull."""
PutCall = Callable[..., Awaitable[dict[str, Any]]]
"""Sends one range of a push (``offset``, ``data``, ``more`` and, last, ``sha256``)."""
ReadRange = Callable[[int, int], Awaitable[Buffer]]
OpenRanges = Callable[[], AbstractAsyncContextManager[RangeCall]]
"""Opens where the ranges after the first are asked for (a connection of their own)."""


def range_answer(reply: dict[str, Any], offset: int) -> tuple[Buffer, int]:
    """The bytes and the payload's total size in one range answer (an answer without
    ``size`` is a whole payload, from a node that does not know ranges). A large range is
    a view of the frame it came in (framing.unpack), not a copy."""
    data = reply.get("data")
    if not isinstance(data, bytes | memoryview):
        raise DecodeError("a range answer carries its bytes in 'data'")
    size = reply.get("size", offset + len(data))
    if not isinstance(size, int) or size < offset + len(data):
        raise DecodeError(f"a range answer says the payload is {size!r} bytes")
    return data, size


class RangeSink(Protocol):
    """Where a pull puts a payload larger than one range (BlobWriter: a file;
    TensorReceiver: arrays), written in order from a worker thread."""

    size: int

    def reserve(self, size: int) -> None: ...

    def write(self, offset: int, chunk: Buffer) -> None: ...

    def abort(self) -> None: ...


Sink = TypeVar("Sink", bound=RangeSink)


async def pull(
    call: RangeCall,
    chunk: int,
    writer: Callable[[], Sink],
    *,
    open_rest: OpenRanges | None = None,
    window: int = WINDOW,
) -> tuple[bytes | None, Sink | None]:
    """Fetch one payload: its bytes when one range holds it all, else a writer holding
    it (not yet committed: the caller checks the hash with ``commit`` or aborts). The
    first range comes from ``call``; the others, ``window`` in flight, from what
    ``open_rest`` opens (``call`` again without it) while earlier ones are written."""
    data, size = range_answer(await call(0, chunk), 0)
    if len(data) >= size:
        return bytes(data), None
    sink = writer()
    try:
        await trio.to_thread.run_sync(sink.reserve, size)
        if open_rest is None:
            await _pull_rest(call, sink, data, size, window)
        else:
            async with open_rest() as rest:
                await _pull_rest(rest, sink, data, size, window)
    except BaseException:
        sink.abort()
        raise
    return None, sink


@dataclass
class _Range:
    """One range of a pull: asked for, then answered (``data``) or failed (``error``)."""

    offset: int
    length: int
    answered: trio.Event
    data: Buffer | None = None
    error: Exception | None = None


async def _pull_rest(
    call: RangeCall, sink: RangeSink, first: Buffer, size: int, window: int
) -> None:
    """The ranges after ``first`` into ``sink``, in order, ``window`` asked at once."""
    stride = len(first)  # the source's range length: every range but the last is as long
    ranges = [
        _Range(offset, min(stride, size - offset), trio.Event())
        for offset in range(stride, size, stride)
    ]
    room = trio.Semaphore(window)
    """Ranges in memory (asked for, or answered and not yet written)."""

    async def fetch(part: _Range) -> None:
        try:
            data, total = range_answer(await call(part.offset, part.length), part.offset)
            if total != size:
                raise DecodeError(
                    f"the payload changed from {size} to {total} bytes during the transfer"
                )
            part.data = data
        except Exception as error:  # handed to the writing loop below, raised there as itself
            part.error = error
        part.answered.set()

    async def ask(nursery: trio.Nursery) -> None:
        for part in ranges:
            await room.acquire()
            nursery.start_soon(fetch, part)

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, nursery)
        try:
            await trio.to_thread.run_sync(sink.write, 0, first)
            for part in ranges:
                await part.answered.wait()
                if part.error is not None:
                    raise part.error
                data, part.data = part.data, None
                assert data is not None
                await trio.to_thread.run_sync(sink.write, part.offset, data)
                offset = part.offset + len(data)
                del data
                while offset < part.offset + part.length:  # a short answer: the rest of it
                    more, total = range_answer(
                        await call(offset, part.offset + part.length - offset), offset
                    )
                    if total != size or not more:
                        raise DecodeError(
                            f"the payload changed from {size} to {total} bytes during the transfer"
                        )
                    await trio.to_thread.run_sync(sink.write, offset, more)
                    offset += len(more)
                room.release()
        except Exception as error:  # raised below as itself, not in a group
            failure = error
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def push(
    put: PutCall,
    read: ReadRange,
    size: int,
    sha256: str | Callable[[], str],
    chunk: int,
    *,
    window: int = WINDOW,
) -> dict[str, Any]:
    """Send one payload of ``size`` bytes in ranges read with ``read``: the first alone,
    then ``window`` unanswered at once. Returns the last answer (the first one when it
    says the receiver holds the payload already: ``held``). ``sha256`` may be a function,
    called once the last range was read (a sender that hashes the ranges as it reads
    them: the digest is known only then)."""

    def fields_of(offset: int, data: Buffer) -> dict[str, Any]:
        if not data and offset < size:
            raise DecodeError(f"the payload ended at {offset} of {size} bytes")
        more = offset + len(data) < size
        fields: dict[str, Any] = {"offset": offset, "data": data, "more": more, "size": size}
        if not more:
            fields["sha256"] = sha256 if isinstance(sha256, str) else sha256()
        return fields

    first = fields_of(0, await read(0, chunk))
    answer = await put(**first)
    if not first["more"] or answer.get("held"):
        return answer
    room = trio.Semaphore(window)
    last: list[dict[str, Any]] = []
    failure: list[Exception] = []

    async def send(fields: dict[str, Any]) -> None:
        try:
            reply = await put(**fields)
            if not fields["more"]:
                last.append(reply)
        except Exception as error:  # raised below as itself, not in a group
            failure.append(error)
            nursery.cancel_scope.cancel()
        finally:
            room.release()

    async with trio.open_nursery() as nursery:
        try:
            offset = len(first["data"])
            while offset < size:
                await room.acquire()
                fields = fields_of(offset, await read(offset, chunk))
                nursery.start_soon(send, fields)
                offset += len(fields["data"])
        except Exception as error:
            failure.append(error)
            nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return last[0]


class HashingReader:
    """``read`` of a push, hashing each range as it is read (in a worker thread, while the
    ranges before it are on their way): the sender's digest without a pass over the
    payload before its first byte is sent. push reads the ranges once each, in order."""

    def __init__(self, read: ReadRange) -> None:
        self._read = read
        self._hash = hashlib.sha256()
        self._next = 0

    async def __call__(self, offset: int, length: int) -> Buffer:
        if offset != self._next:
            raise DecodeError(f"range at {offset} read where {self._next} was next")
        data = await self._read(offset, length)
        await trio.to_thread.run_sync(self._hash.update, data)
        self._next = offset + len(data)
        return data

    def hexdigest(self) -> str:
        """The sha256 of the ranges read so far (the payload's, once the last was read)."""
        return self._hash.hexdigest()


@dataclass(frozen=True)
class Fetched:
    """A task's input payload where the worker can read it: in memory (``data``), or in a
    file (``path``), which is a scratch copy of our own when ``owned``, or received
    straight into its arrays (``arrays``: a worker's read-once copy of a task's inputs)."""

    data: bytes | None = None
    path: Path | None = None
    owned: bool = False
    arrays: dict[str, Any] | None = None

    async def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None, "inputs received as arrays have no bytes"
        return await trio.to_thread.run_sync(self.path.read_bytes)

    async def tensors(self) -> dict[str, Any]:
        if self.arrays is not None:
            return self.arrays
        if self.data is not None:
            return tensors_from_bytes(self.data)
        assert self.path is not None
        return await trio.to_thread.run_sync(load_tensors, self.path)

    def discard(self) -> None:
        """Delete a scratch copy (never a stored payload), off the event loop."""
        if self.owned and self.path is not None:
            SHARED_RELEASE.unlink(self.path)


class Spill(Protocol):
    """The worker's own copy of a large result, written to its payload store while the
    same bytes are pushed to the holders (results.py)."""

    async def run(self, write: bool = True) -> None:
        """Hash, and with ``write`` write, sync and install the copy (run beside the
        pushes)."""

    async def keep(self) -> None:
        """Write, sync and install the copy, if :meth:`run` did not (a worker that
        skipped its own copy and then found the holders short: results.py)."""

    async def wait(self) -> bool:
        """Once :meth:`run` ended: whether the copy is stored here."""

    def sha256(self) -> str:
        """The result's digest, once :meth:`wait` returned."""

    @property
    def kept_attempt(self) -> int | None:
        """Once :meth:`wait` returned False: the newer attempt whose result this node
        keeps instead (the copy was refused for it), else None."""


@dataclass(frozen=True)
class ResultSource:
    """A run's result ready to push: ``data`` when small, else ``read`` ranges of
    ``size`` bytes (``stored_here``: the worker's own copy is in its payload store;
    ``spill``: that copy is being written while the ranges are read, and the digest is
    known once it was, which ``read`` waits for before the last range)."""

    size: int
    sha256: str | Callable[[], str]
    read: ReadRange
    stored_here: bool
    data: bytes | None = None
    spill: Spill | None = None

    @classmethod
    def of_bytes(cls, data: bytes) -> ResultSource:
        async def read(offset: int, length: int) -> Buffer:
            return memoryview(data)[offset : offset + length]

        return cls(len(data), hashlib.sha256(data).hexdigest(), read, False, data)

    async def kept_here(self) -> bool:
        """Whether the worker's own copy is in its payload store (waits for a spill)."""
        if self.spill is not None:
            return await self.spill.wait()
        return self.stored_here


async def read_blob(blob: TensorBlob, offset: int, length: int) -> Buffer:
    """A range of ``blob`` to send: a view of the array it lies in, or, for a range
    that spans a header and data (the first of each payload), a copy made in a worker
    thread: 16 MiB copied on the event loop held a daemon's loop (and its answers to
    probes) for the copy, twice per result push before (a join into a ``bytearray``,
    then ``bytes`` of it)."""
    view = blob.range_view(offset, length)
    if view is not None:
        return view
    return await trio.to_thread.run_sync(blob.read, offset, length)


def memory_reader(blob: TensorBlob) -> ReadRange:
    async def read(offset: int, length: int) -> Buffer:
        return await read_blob(blob, offset, length)

    return read
