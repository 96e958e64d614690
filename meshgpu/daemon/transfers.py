"""Moving one payload between two nodes in ranges (blobs.py has the bytes' form).

Both directions are plain requests, one range each, so no side ever holds more than one
chunk of a transfer in memory and a receiver that is slower than the network simply
asks later (no flow control to get wrong on a connection shared with small requests):

* pulling (``get_inputs``/``get_result`` with ``offset`` and ``length``): the answer is
  ``{"data": bytes, "size": total}``; the first range says how large the payload is, and
  a payload that fits in it is handled in memory exactly as before;
* pushing (``put_inputs``/``put_result`` with ``offset``, ``data`` and ``more``): the
  receiver appends each range to a scratch file and, on the last one (``more`` false,
  with ``sha256``), checks the bytes and installs the file.

Ranges of one transfer go in order, one at a time; a broken transfer starts again at 0
from the next source (a range of a file that vanished is an error, never a short read
taken for the end). Rejected: a stream of ``more`` responses to one request (the
requester's connection buffers responses without bound, so a slow disk would pile up
the whole tensor in memory), and resuming at the last offset on another source (the
sources are independent copies; starting again keeps the hash check simple).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshgpu.daemon.blobs import BlobWriter, TensorBlob, load_tensors
from meshgpu.daemon.payloads import tensors_from_bytes
from meshgpu.errors import DecodeError

RangeCall = Callable[[int, int], Awaitable[dict[str, Any]]]
"""``(offset, length)`` -> one range answer ``{"data", "size"}`` of a pull."""
PutCall = Callable[..., Awaitable[dict[str, Any]]]
"""Sends one range of a push (``offset``, ``data``, ``more`` and, last, ``sha256``)."""
ReadRange = Callable[[int, int], Awaitable[bytes]]


def range_answer(reply: dict[str, Any], offset: int) -> tuple[bytes, int]:
    """The bytes and the payload's total size in one range answer (an answer without
    ``size`` is a whole payload, from a node that does not know ranges)."""
    data = reply.get("data")
    if not isinstance(data, bytes):
        raise DecodeError("a range answer carries its bytes in 'data'")
    size = reply.get("size", offset + len(data))
    if not isinstance(size, int) or size < offset + len(data):
        raise DecodeError(f"a range answer says the payload is {size!r} bytes")
    return data, size


async def pull(
    call: RangeCall, chunk: int, writer: Callable[[], BlobWriter]
) -> tuple[bytes | None, BlobWriter | None]:
    """Fetch one payload: its bytes when one range holds it all, else a writer holding
    it (not yet committed: the caller checks the hash with ``commit`` or aborts). The
    next range is asked for while the last one is written and hashed."""
    data, size = range_answer(await call(0, chunk), 0)
    if len(data) >= size:
        return data, None
    sink = writer()
    try:
        offset = 0
        while True:
            following = offset + len(data)
            if following >= size:
                await trio.to_thread.run_sync(sink.write, offset, data)
                return None, sink
            reply = await _while_writing(call(following, chunk), sink, offset, data)
            data, total = range_answer(reply, following)
            if total != size or not data:
                raise DecodeError(
                    f"the payload changed from {size} to {total} bytes during the transfer"
                )
            offset = following
    except BaseException:
        sink.abort()
        raise


async def _while_writing(
    request: Awaitable[dict[str, Any]], sink: BlobWriter, offset: int, data: bytes
) -> dict[str, Any]:
    """The answer to ``request``, awaited while ``data`` is written at ``offset``; the
    first error of either is raised as itself (not in a group)."""
    answer: list[dict[str, Any]] = []
    failure: list[BaseException] = []

    async def ask() -> None:
        try:
            answer.append(await request)
        except Exception as error:  # handed to the caller below, unwrapped
            failure.append(error)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.to_thread.run_sync(sink.write, offset, data)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if failure:
        raise failure[0]
    return answer[0]


async def push(put: PutCall, read: ReadRange, size: int, sha256: str, chunk: int) -> None:
    """Send one payload of ``size`` bytes in ranges read with ``read``."""
    offset = 0
    while True:
        data = await read(offset, chunk)
        if not data and offset < size:
            raise DecodeError(f"the payload ended at {offset} of {size} bytes")
        more = offset + len(data) < size
        fields: dict[str, Any] = {"offset": offset, "data": data, "more": more}
        if not more:
            fields.update(sha256=sha256, size=size)
        await put(**fields)
        offset += len(data)
        if not more:
            return


@dataclass(frozen=True)
class Fetched:
    """A task's input payload where the worker can read it: in memory (``data``), or in a
    file (``path``), which is a scratch copy of our own when ``owned``."""

    data: bytes | None = None
    path: Path | None = None
    owned: bool = False

    async def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return await trio.to_thread.run_sync(self.path.read_bytes)

    async def tensors(self) -> dict[str, Any]:
        if self.data is not None:
            return tensors_from_bytes(self.data)
        assert self.path is not None
        return await trio.to_thread.run_sync(load_tensors, self.path)

    def discard(self) -> None:
        """Delete a scratch copy (never a stored payload)."""
        if self.owned and self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ResultSource:
    """A run's result ready to push: ``data`` when small, else ``read`` ranges of
    ``size`` bytes (``stored_here``: the worker's own copy is in its payload store)."""

    size: int
    sha256: str
    read: ReadRange
    stored_here: bool
    data: bytes | None = None

    @classmethod
    def of_bytes(cls, data: bytes) -> ResultSource:
        async def read(offset: int, length: int) -> bytes:
            return data[offset : offset + length]

        return cls(len(data), hashlib.sha256(data).hexdigest(), read, False, data)


def memory_reader(blob: TensorBlob) -> ReadRange:
    async def read(offset: int, length: int) -> bytes:
        return blob.read(offset, length)

    return read
