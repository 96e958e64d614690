"""Length-prefixed msgpack frames over a trio byte stream.

Every TCP connection of meshgpu (client API, task payloads, model transfer, results)
carries a sequence of frames::

    length (4 bytes, big-endian, unsigned) | envelope (see auth/envelope.py) around msgpack bytes

The length is checked against ``max_frame_bytes`` *before* any body is read, so a
garbage or hostile peer cannot make us buffer gigabytes: the first four bytes of
``GET / HTTP/1.1`` announce a 1.2 GB frame and are refused at once. Before the body of a
large frame is given its buffer (and before the first frame of a connection counts as
begun: :attr:`FrameStream.header_seen`), the envelope's magic is read and checked, so a
length prefix followed by anything but a meshgpu envelope is refused without the
allocation (zero-filling a 64 MiB buffer held the event loop for tens of milliseconds
per lying frame, long enough to miss a 100 ms probe). Any error here
(oversized, truncated, not msgpack, failed authentication) is a
:class:`~meshgpu.errors.RemoteProtocolError`; the caller closes that one connection and
the daemon goes on serving everybody else.

Rejected alternatives: msgpack's own streaming ``Unpacker`` needs no length prefix but
cannot authenticate a message before parsing it, and its size limits are per object,
not per message; newline-delimited JSON cannot carry tensors without base64.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import socket as stdlib_socket
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from meshgpu.daemon.auth import Authenticator, Channel, Sealer
from meshgpu.daemon.auth.envelope import Buffer
from meshgpu.daemon.auth.handshake import MAGIC
from meshgpu.errors import DecodeError, FrameTooLargeError, IncompatiblePeerError

LENGTH = struct.Struct("!I")
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted; model transfers are chunked well below it."""

_RECEIVE_CHUNK = 256 * 1024
_LARGE_RECEIVE = 4 << 20
_BIN_32 = b"\xc6"
"""msgpack's marker of a ``bin`` with a 4-byte length (what ``packb`` uses past 64 KiB)."""


FRAME_HEAP_BYTES = 160 << 20
"""Freed memory a daemon's heap keeps for the next large frames (``keep_frame_memory``):
the ranges of an upload in flight (the sender's window and a relay's, 8 of 16 MiB) and
some slack."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's largest ``M_MMAP_THRESHOLD`` on 64-bit: a frame up to it comes from the heap."""


THREAD_MOVE_BYTES = 1 << 20
"""A frame's piece at least this large is sent, and a large frame's body received, by a
worker thread while the bytes flow (:func:`_move_while_flowing`)."""
_STALL_S = 0.02
"""A thread that waited this long for the socket hands the rest back to trio."""
_THREAD_BUDGET_S = 0.5
"""At most this long in one thread call (a cancelled transfer waits at most this)."""
_SOCKET_THREADS = trio.lowlevel.RunVar[trio.CapacityLimiter]("socket_threads")
SOCKET_THREADS = 8
"""Threads of a process that move large frames at a time (a limiter of their own, so
that transfers never take the threads the disk writes and runs wait for); a frame that
finds none free is moved by trio's loop."""


def _socket_threads() -> trio.CapacityLimiter:
    try:
        return _SOCKET_THREADS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(SOCKET_THREADS)
        _SOCKET_THREADS.set(limiter)
        return limiter


def _move_while_flowing(descriptor: int, view: memoryview, receive: bool) -> tuple[int, bool]:
    """Send ``view`` to, or receive it from, a stream socket in a worker thread, in C's
    loop (the GIL released in each call) for as long as the bytes flow: returns the
    bytes moved and whether the peer closed (receiving), once all moved, the socket had
    no room or no bytes for ``_STALL_S``, or ``_THREAD_BUDGET_S`` passed; trio's loop
    waits for the socket and moves the rest. ``descriptor`` is the caller's own
    (:meth:`FrameStream._move_in_thread`), left open. trio's own loop costs a scheduler
    step of Python per partial ``send``/``recv_into`` (a few hundred KiB each on
    loopback): a 1 GiB frame stream took 0.62-0.71 CPU s to send and 0.50-0.55 to
    receive that way, 0.37-0.48 and 0.39-0.44 this way (two processes on the project's
    VM, load 3-8)."""
    started = time.monotonic()
    moved = 0
    sock = stdlib_socket.socket(fileno=descriptor)
    try:
        sock.settimeout(_STALL_S)  # O_NONBLOCK, as trio already set it on the shared file
        while moved < len(view):
            try:
                if receive:
                    count = sock.recv_into(view[moved:])
                    if not count:
                        return moved, True
                else:
                    count = sock.send(view[moved:])
            except TimeoutError:
                break
            moved += count
            if time.monotonic() - started > _THREAD_BUDGET_S:
                break
    finally:
        sock.detach()  # the caller closes the descriptor
    return moved, False


def _bytearray_maker() -> Callable[[int], bytearray]:
    """CPython's ``PyByteArray_FromStringAndSize(NULL, n)``: a bytearray whose bytes are
    not set (``bytearray(n)`` zero-fills them); ``bytearray`` where it is missing."""
    import ctypes

    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except AttributeError:  # not CPython
        return bytearray
    make.restype = ctypes.py_object
    make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    return functools.partial(make, None)


unfilled_bytearray: Callable[[int], bytearray] = _bytearray_maker()
"""A bytearray of ``n`` bytes not set to anything, for a buffer about to be filled whole
(a large frame's body, read with ``recv_into``). ``bytearray(n)`` zero-fills first: 0.19
CPU s a GiB received, on the event loop and with the GIL held, for bytes overwritten at
once."""


SPARE_FRAMES = 6
"""Buffers of large frames a stream keeps for the next ones once nothing refers to them
(:class:`FramePool`): the four ranges of a transfer's window in flight, and the ones
its receiver still copies from."""


class FramePool:
    """The buffers a stream's large frames are read into, used again once nothing
    refers to them: a range is handed on as a view of its frame (``unpack``), copied
    out of it by whoever takes it (a file, an array) in a worker thread, and dropped.
    A buffer still referred to (by a view, through the ``memoryview`` that holds it) is
    never handed out again; one is free when the pool's own references are its only
    ones (CPython's reference count, against what the same read gives a buffer
    nothing else refers to on this interpreter). Each fresh buffer of 16 MiB costs
    4,096 page faults to fill where the C library gave it fresh pages (a client's heap
    returns freed frames to the system: 70-100 k faults a GiB received, about 0.3-0.4
    system CPU s, measured in ``bench/bigtensor.py``'s client). A daemon's heap keeps
    them already (:func:`keep_frame_memory`); the pool holds at most ``spare``
    (``SPARE_FRAMES``) per stream, given back when the stream closes or once ``idle_s``
    passed without a large frame: when a small frame arrives then, or when nothing has
    (``FrameStream.receive`` waits for the next frame at most until :attr:`idle_at`; a
    daemon's pooled link to a peer, never closed while the peer lives, kept the buffers
    of the last large ranges it carried for as long as it stayed quiet); with ``spare``
    0 every large frame gets a buffer of its own, as before."""

    def __init__(self, spare: int = SPARE_FRAMES, idle_s: float = 2.0) -> None:
        self._buffers: list[bytearray] = []
        self._spare = spare
        self._idle_s = idle_s
        self._last_large = 0.0
        self._free_count: int | None = None
        """What :meth:`_counts` reads for a buffer nothing else refers to, measured on
        this interpreter (:meth:`_free_references`)."""

    def _counts(self) -> list[int]:
        """Each buffer's reference count, read while no name of the caller refers to any."""
        import sys

        return [sys.getrefcount(buffer) for buffer in self._buffers]

    def _free_references(self) -> int:
        """The count :meth:`_counts` reads for a free buffer, measured once on a probe by
        the same code: the references the read itself adds are the interpreter's own
        (3 on CPython 3.11-3.13: the list, the comprehension's name and getrefcount's
        argument; 3.14 borrows stack references and reads fewer). A fixed 3 read a
        buffer a view still refers to as free wherever a read adds one fewer, and the
        next frame overwrote that range."""
        if self._free_count is None:
            probe = FramePool.__new__(FramePool)
            probe._buffers = [bytearray(1)]
            self._free_count = probe._counts()[0]
        return self._free_count

    def buffer(self, count: int, now: float) -> memoryview:
        """A buffer of ``count`` bytes, not set to anything, to read a frame into."""
        self._last_large = now
        free = self._free_references()
        # A memoryview of a buffer (held by a view of a range still in use) adds one.
        counts = self._counts()
        for at, references in enumerate(counts):
            if references <= free and count <= len(self._buffers[at]) <= 2 * count:
                return memoryview(self._buffers[at])[:count]
        fresh = unfilled_bytearray(count)
        if len(self._buffers) < self._spare:
            self._buffers.append(fresh)
        elif unused := [at for at, references in enumerate(counts) if references <= free]:
            del self._buffers[unused[0]]  # a smaller one nothing uses: give it back
            self._buffers.append(fresh)
        return memoryview(fresh)[:count]

    def idle(self, now: float) -> None:
        """A small frame arrived: give the buffers back after ``idle_s`` without a large
        one (a stream that moved a GiB once keeps no 100 MiB for its life)."""
        if self._buffers and now - self._last_large > self._idle_s:
            self._buffers.clear()

    @property
    def idle_at(self) -> float:
        """When the buffers are given back unless a large frame comes first."""
        return self._last_large + self._idle_s

    def clear(self) -> None:
        self._buffers.clear()

    def __len__(self) -> int:
        return len(self._buffers)


def keep_frame_memory() -> bool:
    """Have glibc's heap keep the memory of freed large frames for the next ones (invoked
    once, as a daemon process starts). A large frame is read into a buffer of its size
    (:meth:`FrameStream._receive_into`); with several 16 MiB ranges in flight, glibc
    often gave them fresh pages (past its dynamic mmap threshold, or trimmed from the
    top of the heap when the window's frames were freed), a page fault per 4 KiB
    received: 0.85-1.1 system CPU s a GiB in the worst case, measured apart, on the
    project's VM, whose freed pages the host takes back (virtio-balloon free page
    reporting) and faults in again (docs/daemon.md, "Write-behind").
    With frames below ``_MMAP_THRESHOLD_MAX`` served from the heap and up to
    ``FRAME_HEAP_BYTES`` of freed memory kept at its top, the same loop of four 16 MiB
    buffers at a time faults nothing after the first round. Larger frames (up to the
    64 MiB frame limit) are mapped and unmapped as before. False where the C library is
    not glibc (the call is skipped; nothing changes but the page faults)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, FRAME_HEAP_BYTES)
    )


def pack(message: Any) -> bytes:
    """msgpack bytes of a message (bytes stay bytes, str stays str)."""
    return b"".join(pack_pieces(message))


def pack_pieces(message: Any) -> list[Buffer]:
    """:func:`pack` as pieces to write in order: a message with a large ``data`` field
    (a range of a payload) is its other fields, then ``data``'s msgpack header, then
    ``data`` itself, not copied (the order of a map's keys is not part of a message)."""
    data = message.get("data") if isinstance(message, dict) else None
    if isinstance(data, bytes | bytearray | memoryview) and len(data) > _RECEIVE_CHUNK:
        packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        packer.pack_map_header(len(message))
        for key, value in message.items():
            if key != "data":
                packer.pack(key)
                packer.pack(value)
        packer.pack("data")
        view = memoryview(data).cast("B")
        return [packer.bytes() + _BIN_32 + LENGTH.pack(len(view)), view]
    return [msgpack.packb(message, use_bin_type=True)]


_HEAD_WINDOW = 64 << 10
"""Bytes of a large frame parsed for the fields before its range (``_unpack_range``)."""


def unpack(data: bytes | bytearray | memoryview) -> Any:
    """The message in ``data``; raises :class:`DecodeError` for anything but one msgpack value.
    A large frame that ends in a range (``data``, as :func:`pack_pieces` writes one) gives
    that range as a read-only view of ``data``, not a copy."""
    if len(data) > _RECEIVE_CHUNK:
        message = _unpack_range(memoryview(data))
        if message is not None:
            return message
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    # TypeError: a map whose key is a map or an array (unhashable), as a peer may send
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as error:
        raise DecodeError(f"frame is not a msgpack message: {error}") from None


def _unpack_range(body: memoryview) -> dict[Any, Any] | None:
    """A map whose last entry is ``data`` holding a ``bin 32`` of more than
    ``_RECEIVE_CHUNK`` bytes that runs to the end of ``body``: its other fields decoded
    from the first bytes, ``data`` a read-only view of ``body``. None for any other shape
    (the caller decodes it whole, and reports what is malformed)."""
    head = bytes(body[:_HEAD_WINDOW])
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(head))
    unpacker.feed(head)
    try:
        count = unpacker.read_map_header()
        message: dict[Any, Any] = {}
        for _ in range(count - 1):
            key = unpacker.unpack()
            message[key] = unpacker.unpack()
        if count < 1 or unpacker.unpack() != "data":
            return None
        at = unpacker.tell()
    except (ValueError, TypeError, msgpack.OutOfData, msgpack.StackError):
        return None
    if head[at : at + 1] != _BIN_32 or at + 5 > len(head):
        return None
    (length,) = LENGTH.unpack(head[at + 1 : at + 5])
    if length <= _RECEIVE_CHUNK or at + 5 + length != len(body) or "data" in message:
        return None
    message["data"] = body[at + 5 :].toreadonly()
    return message


class FrameStream:
    """Sends and receives whole messages on one connection.

    Not safe for two tasks sending at once; give each connection one sender (or guard it
    with a ``trio.Lock``, as the daemon's peer connections do).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        authenticator: Authenticator,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        key_id: bytes | None = None,
        answering: bool = False,
    ) -> None:
        self.stream = stream
        self.authenticator = authenticator
        self.max_frame_bytes = max_frame_bytes
        self._sealer: Sealer = authenticator.new_session(Channel.FRAME)
        self._sealer.key_id = key_id
        self._answering = answering
        self._buffer = bytearray()
        self.frames = FramePool(spare=0 if answering else SPARE_FRAMES)
        """The buffers large frames are read into, used again once free on the requesting
        side (a client's connection, a daemon's to its peers). The answering side (the
        API server) keeps none: whoever connects may send large frames before they are
        refused, and buffers kept per connection would outlast them; a daemon's heap
        keeps freed frames' memory instead (:func:`keep_frame_memory`)."""
        self._source: tuple[str, int] | None = None
        socket = getattr(stream, "socket", None)
        self._socket: trio.socket.SocketType | None = socket
        """The stream's socket, read directly (``recv_into``) for large frames."""
        if socket is not None:
            with contextlib.suppress(OSError):
                host, port = socket.getpeername()[:2]
                self._source = (host, port)  # names a refused peer whose name is encrypted
        self.header_seen = trio.Event()
        """Set once the first frame's length and envelope magic have arrived and are
        well-formed: the peer speaks meshgpu (the API server's handshake deadline)."""
        self.peer_sender: str | None = None
        """The sender id of the first frame received (who is at the other end)."""
        self.peer_key_id: bytes | None = None
        """The key id that sealed the last frame received (empty: it came without a key).
        On the answering side (``answering``: the API server) frames are sealed with that
        key while it is installed, so a client holding an older key of the keyring reads
        the answers; the requesting side seals by the node's policy (or ``key_id``)."""

    async def send(self, message: Any) -> None:
        pieces = self._sealer.seal_pieces(pack_pieces(message))
        size = sum(len(piece) for piece in pieces)
        self._check_size(size)
        # Small pieces go out with the prefix in one write; a large one (a payload range,
        # or a whole keyed envelope) is written from its own memory, never joined first.
        head: list[Buffer] = [LENGTH.pack(size)]
        for piece in pieces:
            if len(piece) > _RECEIVE_CHUNK:
                if head:
                    await self.stream.send_all(b"".join(head))
                    head = []
                if self._socket is not None and len(piece) >= THREAD_MOVE_BYTES:
                    await self._send_large(memoryview(piece).cast("B"))
                else:
                    await self.stream.send_all(piece)
            else:
                head.append(piece)
        if head:
            await self.stream.send_all(b"".join(head))

    async def _send_large(self, view: memoryview) -> None:
        """A large piece of a frame sent by a worker thread while the socket takes it
        (:func:`_move_while_flowing`), by trio's loop while it does not (a slow or
        stalled reader holds no thread). Errors are the stream's (``send_all``'s)."""
        assert self._socket is not None
        sent = 0
        limiter = _socket_threads()
        while sent < len(view):
            if limiter.available_tokens:
                try:
                    moved, _ = await self._move_in_thread(view[sent:], False, limiter)
                except OSError as error:
                    raise self._send_error(error) from error
                self._check_open()  # closed while the thread moved bytes on its own copy
                sent += moved
                if sent == len(view):
                    return
            try:
                sent += await self._socket.send(view[sent:])
            except OSError as error:
                raise self._send_error(error) from error

    def _closed(self, error: OSError | None = None) -> bool:
        """Whether this side closed the stream (``error``: what its socket raised), as
        trio's own ``SocketStream`` tells it: the socket has no descriptor any more, or
        the error is EBADF or ENOTSOCK."""
        assert self._socket is not None
        return self._socket.fileno() == -1 or (
            error is not None and error.errno in (errno.EBADF, errno.ENOTSOCK)
        )

    def _check_open(self) -> None:
        """Raise ``trio.ClosedResourceError`` if this side closed the stream: a large
        frame's thread moves bytes on a descriptor of its own (``_move_in_thread``), so
        a close meanwhile is noticed only here."""
        if self._closed():
            raise trio.ClosedResourceError("the stream was closed")

    def _send_error(self, error: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
        """What a large send raises for ``error``: ``ClosedResourceError`` when this side
        closed the stream, ``BrokenResourceError`` otherwise, as ``send_all`` raises them
        (a small frame, or a large one on trio's loop, fails like either)."""
        if self._closed(error):
            return trio.ClosedResourceError("the stream was closed")
        return trio.BrokenResourceError(error)

    async def _move_in_thread(
        self, view: memoryview, receive: bool, limiter: trio.CapacityLimiter
    ) -> tuple[int, bool]:
        """:func:`_move_while_flowing` on a descriptor of the socket's own, duplicated
        here before the thread starts (trio runs other tasks while it takes a thread,
        and a loaded machine starts the thread late): a task that closes the stream
        meanwhile, and a connection opened since with the freed number, never gets this
        frame's bytes, nor gives it its own. Raises OSError when the socket is closed;
        moves nothing when the process has no descriptor to spare (trio's loop does)."""
        assert self._socket is not None
        try:
            descriptor = os.dup(self._socket.fileno())
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                # At the open-file limit (a flood of connections): this is no broken
                # connection, as the error was taken for; trio's loop moves the bytes.
                return 0, False
            raise
        try:
            return await trio.to_thread.run_sync(
                _move_while_flowing, descriptor, view, receive, limiter=limiter
            )
        finally:
            os.close(descriptor)

    async def send_many(self, messages: list[Any]) -> None:
        """Several frames in one write (each still a frame of its own on the wire)."""
        if messages:
            await self.stream.send_all(b"".join(self._frame(message) for message in messages))

    def _frame(self, message: Any) -> bytes:
        sealed = self._seal(message)
        return LENGTH.pack(len(sealed)) + sealed

    def _seal(self, message: Any) -> bytes | bytearray:
        sealed = self._sealer.seal(pack(message))
        self._check_size(len(sealed))
        return sealed

    def _check_size(self, size: int) -> None:
        if size > self.max_frame_bytes:
            raise FrameTooLargeError(
                f"refusing to send a {size}-byte frame, the limit is "
                f"{self.max_frame_bytes}; send large data in chunks"
            )

    async def send_refusal(self, error: IncompatiblePeerError) -> None:
        """Tell a peer of another version or mesh why it is refused, in the one frame
        every version reads (auth/handshake.py); nothing more is sent on this connection."""
        refusal = self.authenticator.refusal(Channel.FRAME, error)
        await self.stream.send_all(LENGTH.pack(len(refusal)) + refusal)

    async def receive(self) -> Any | None:
        """The next message, or None when the peer closed cleanly between frames."""
        if len(self.frames) and not self._buffer:
            await self._release_frames_when_idle()
        header = await self._receive_exactly(LENGTH.size, at_boundary=True)
        if header is None:
            return None
        (length,) = LENGTH.unpack(header)
        if length > self.max_frame_bytes:
            if header == b"HTTP":  # an HTTP status line read as a length
                raise FrameTooLargeError(
                    "this port answers in HTTP: it is a daemon's HTTP port (--http-port, "
                    "default 8000), not its API port (--port, default 7946)"
                )
            raise FrameTooLargeError(
                f"peer announced a {length}-byte frame, the limit is {self.max_frame_bytes} "
                "(is something other than a meshgpu peer talking to this port?)"
            )
        if length > _RECEIVE_CHUNK or not self.header_seen.is_set():
            await self._check_magic(length)
        if length > _RECEIVE_CHUNK and self._socket is not None:
            body: bytes | bytearray | memoryview | None = await self._receive_into(length)
        else:
            body = await self._receive_exactly(length, at_boundary=False)
            if len(self.frames):
                self.frames.idle(trio.current_time())
        assert body is not None
        envelope = self.authenticator.open(body, Channel.FRAME, self._source, as_view=True)
        key_id = envelope.key_id
        if key_id != self.peer_key_id:
            self.peer_key_id = key_id
            if self._answering:
                self._sealer.key_id = key_id or None
        if self.peer_sender is None:
            self.peer_sender = envelope.sender
        elif envelope.sender != self.peer_sender:
            raise DecodeError(
                f"sender changed mid-connection from {self.peer_sender} to {envelope.sender}"
            )
        return unpack(envelope.payload)

    async def _release_frames_when_idle(self) -> None:
        """Wait for the next frame's first bytes until the frame buffers' idle time is
        up (:attr:`FramePool.idle_at`), then give the buffers back: a connection that
        stays quiet after large frames (a requesting side with nothing in flight) keeps
        none. Nothing is read here, so the wait may end anywhere; a socket that has
        bytes waiting already costs one ``poll`` and no step of the loop."""
        assert self._socket is not None  # only a socket's stream fills the pool
        ready = select.poll()
        ready.register(self._socket.fileno(), select.POLLIN)
        if ready.poll(0):
            return
        with trio.move_on_at(self.frames.idle_at) as waiting:
            await trio.lowlevel.wait_readable(self._socket)
        if waiting.cancelled_caught:
            self.frames.clear()

    async def _check_magic(self, length: int) -> None:
        """Read the start of a frame's envelope and refuse it unless it has the magic
        every protocol version sends (auth/handshake.py); the buffer keeps the bytes."""
        want = min(length, len(MAGIC))
        while len(self._buffer) < want:
            try:
                chunk = await self.stream.receive_some(_RECEIVE_CHUNK)
            except trio.BrokenResourceError as error:
                raise DecodeError(f"connection broken: {error}") from None
            if not chunk:
                raise DecodeError(
                    f"connection closed mid-frame ({len(self._buffer)} of {length} bytes read)"
                )
            self._buffer += chunk
        if want == len(MAGIC) and self._buffer[:want] != MAGIC:
            raise DecodeError(
                f"a {length}-byte frame that is not a meshgpu envelope (bad magic); "
                "is something other than a meshgpu peer talking to this port?"
            )
        self.header_seen.set()

    async def request(self, message: Any) -> Any:
        """Send one message and wait for one reply (the client API's request/response)."""
        await self.send(message)
        reply = await self.receive()
        if reply is None:
            raise DecodeError("peer closed the connection before replying")
        return reply

    async def aclose(self) -> None:
        self.authenticator.end_session(self._sealer)
        self.frames.clear()
        await self.stream.aclose()

    async def _receive_into(self, count: int) -> memoryview:
        """A large frame's body read straight into one buffer of its size (``recv_into``:
        the kernel's copy is the only one; pieces joined afterwards cost two more), a
        buffer of an earlier frame when nothing refers to it any more (``frames``)."""
        assert self._socket is not None
        # Every byte is written below, or it raises.
        body = view = self.frames.buffer(count, trio.current_time())
        have = min(len(self._buffer), count)
        view[:have] = self._buffer[:have]
        del self._buffer[:have]
        limiter = _socket_threads()
        while have < count:
            if count >= THREAD_MOVE_BYTES and limiter.available_tokens:
                # While the bytes flow a worker thread reads them (one C loop, not a
                # step of trio's per read); trio's read below waits when they stop.
                try:
                    moved, closed = await self._move_in_thread(view[have:], True, limiter)
                except OSError as error:
                    if self._closed(error):
                        raise trio.ClosedResourceError("the stream was closed") from None
                    raise DecodeError(f"connection broken: {error}") from None
                self._check_open()  # closed while the thread read on its own copy
                have += moved
                if closed:
                    raise DecodeError(f"connection closed mid-frame ({have} of {count} bytes read)")
                if have == count:
                    break
            try:
                received = await self._socket.recv_into(view[have:])
            except OSError as error:
                if self._closed(error):
                    raise trio.ClosedResourceError("the stream was closed") from None
                raise DecodeError(f"connection broken: {error}") from None
            except trio.BrokenResourceError as error:
                raise DecodeError(f"connection broken: {error}") from None
            if not received:
                raise DecodeError(f"connection closed mid-frame ({have} of {count} bytes read)")
            have += received
        return body

    async def _receive_exactly(self, count: int, *, at_boundary: bool) -> bytes | None:
        # Small reads ask for _RECEIVE_CHUNK (several small frames in one call); the rest
        # of a large body is asked for exactly, so it arrives in pieces joined once
        # (appending each piece to the buffer and slicing the frame off it cost three
        # copies of the body: a third of a loopback transfer's time).
        have = len(self._buffer)
        parts: list[bytes | bytearray] = []
        while have < count:
            want = count - have
            try:
                chunk = await self.stream.receive_some(
                    _RECEIVE_CHUNK if want <= _RECEIVE_CHUNK else min(want, _LARGE_RECEIVE)
                )
            except trio.BrokenResourceError as error:
                raise DecodeError(f"connection broken: {error}") from None
            if not chunk:
                if at_boundary and not have:
                    return None
                raise DecodeError(f"connection closed mid-frame ({have} of {count} bytes read)")
            parts.append(chunk)
            have += len(chunk)
        if not parts:
            data = bytes(self._buffer[:count])
            del self._buffer[:count]
            return data
        if self._buffer:
            parts.insert(0, bytes(self._buffer))
        joined = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)  # bytes(bytes): no copy
        if len(joined) == count:
            self._buffer = bytearray()
            return joined
        self._buffer = bytearray(joined[count:])
        return joined[:count]
