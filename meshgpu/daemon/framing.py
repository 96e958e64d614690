"""Length-prefixed msgpack frames over a trio byte stream.

Every TCP connection of meshgpu (client API, task payloads, model transfer, results)
carries a sequence of frames::

    length (4 bytes, big-endian, unsigned) | envelope (see auth/envelope.py) around msgpack bytes

The length is checked against ``max_frame_bytes`` *before* any body is read, so a
garbage or hostile peer cannot make us buffer gigabytes: the first four bytes of
``GET / HTTP/1.1`` announce a 1.2 GB frame and are refused at once. Any error here
(oversized, truncated, not msgpack, failed authentication) is a
:class:`~meshgpu.errors.RemoteProtocolError`; the caller closes that one connection and
the daemon goes on serving everybody else.

Rejected alternatives: msgpack's own streaming ``Unpacker`` needs no length prefix but
cannot authenticate a message before parsing it, and its size limits are per object,
not per message; newline-delimited JSON cannot carry tensors without base64.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import msgpack
import trio

from meshgpu.daemon.auth import Authenticator, Channel, Sealer
from meshgpu.errors import DecodeError, FrameTooLargeError, IncompatiblePeerError

LENGTH = struct.Struct("!I")
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted; model transfers are chunked well below it."""

_RECEIVE_CHUNK = 256 * 1024
_LARGE_RECEIVE = 4 << 20


def pack(message: Any) -> bytes:
    """msgpack bytes of a message (bytes stay bytes, str stays str)."""
    data = message.get("data") if isinstance(message, dict) else None
    if isinstance(data, bytes) and len(data) > _RECEIVE_CHUNK:
        # A range of a payload: a buffer of the right size from the start (packb's grows
        # by doubling, copying the range each time).
        packer = msgpack.Packer(use_bin_type=True, buf_size=len(data) + 4096)
        return packer.pack(message)  # type: ignore[no-any-return]
    return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """The message in ``data``; raises :class:`DecodeError` for anything but one msgpack value."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise DecodeError(f"frame is not a msgpack message: {error}") from None


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
        self._source: tuple[str, int] | None = None
        socket = getattr(stream, "socket", None)
        if socket is not None:
            with contextlib.suppress(OSError):
                host, port = socket.getpeername()[:2]
                self._source = (host, port)  # names a refused peer whose name is encrypted
        self.peer_sender: str | None = None
        """The sender id of the first frame received (who is at the other end)."""
        self.peer_key_id: bytes | None = None
        """The key id that sealed the last frame received (empty: it came without a key).
        On the answering side (``answering``: the API server) frames are sealed with that
        key while it is installed, so a client holding an older key of the keyring reads
        the answers; the requesting side seals by the node's policy (or ``key_id``)."""

    async def send(self, message: Any) -> None:
        sealed = self._seal(message)
        if len(sealed) > _RECEIVE_CHUNK:  # the prefix alone: no copy of a large body
            await self.stream.send_all(LENGTH.pack(len(sealed)))
            await self.stream.send_all(sealed)
        else:
            await self.stream.send_all(LENGTH.pack(len(sealed)) + sealed)

    async def send_many(self, messages: list[Any]) -> None:
        """Several frames in one write (each still a frame of its own on the wire)."""
        if messages:
            await self.stream.send_all(b"".join(self._frame(message) for message in messages))

    def _frame(self, message: Any) -> bytes:
        sealed = self._seal(message)
        return LENGTH.pack(len(sealed)) + sealed

    def _seal(self, message: Any) -> bytes | bytearray:
        sealed = self._sealer.seal(pack(message))
        if len(sealed) > self.max_frame_bytes:
            raise FrameTooLargeError(
                f"refusing to send a {len(sealed)}-byte frame, the limit is "
                f"{self.max_frame_bytes}; send large data in chunks"
            )
        return sealed

    async def send_refusal(self, error: IncompatiblePeerError) -> None:
        """Tell a peer of another version or mesh why it is refused, in the one frame
        every version reads (auth/handshake.py); nothing more is sent on this connection."""
        refusal = self.authenticator.refusal(Channel.FRAME, error)
        await self.stream.send_all(LENGTH.pack(len(refusal)) + refusal)

    async def receive(self) -> Any | None:
        """The next message, or None when the peer closed cleanly between frames."""
        header = await self._receive_exactly(LENGTH.size, at_boundary=True)
        if header is None:
            return None
        (length,) = LENGTH.unpack(header)
        if length > self.max_frame_bytes:
            raise FrameTooLargeError(
                f"peer announced a {length}-byte frame, the limit is {self.max_frame_bytes} "
                "(is something other than a meshgpu peer talking to this port?)"
            )
        body = await self._receive_exactly(length, at_boundary=False)
        assert body is not None
        envelope = self.authenticator.open(body, Channel.FRAME, self._source)
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

    async def request(self, message: Any) -> Any:
        """Send one message and wait for one reply (the client API's request/response)."""
        await self.send(message)
        reply = await self.receive()
        if reply is None:
            raise DecodeError("peer closed the connection before replying")
        return reply

    async def aclose(self) -> None:
        self.authenticator.end_session(self._sealer)
        await self.stream.aclose()

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
