"""Accepting TCP connections under a flood: the loop both the TCP API
(daemon/api.py) and the HTTP port (http/connections.py) run in front of their handlers.

Each wakeup of :func:`accept_forever` takes every connection the kernel holds (up to
:data:`ACCEPT_BURST`, :func:`accept_queued`) with plain non-blocking ``accept`` calls,
and decides on the address ``accept`` returns: a refused connection is reset there and
then (``SO_LINGER`` 0: an RST, and no socket left in ``TIME_WAIT`` on this side), by its
file descriptor, before a socket object, a stream, a TLS session or a task exists for
it. The listening socket itself lingers 0, and an accepted socket is born with its
listener's ``SO_LINGER`` (Linux and the BSDs copy it), so a reset is one ``close``: most
connections of a flood are refused or reset unread, and a handler that keeps one turns
the linger off when it has something to say (:func:`linger_zero`). trio's own
``accept`` takes two trips through the scheduler per connection; under a flood of
reconnects (hundreds a second to each daemon of a mesh that shares a core) those trips,
not the refusals, were most of what the flood cost. How many to take is read from the
listening socket's queue (``TCP_INFO``, :func:`queued`), not found by an ``accept`` that
fails: on the bench machine a failing ``accept`` costs 30-60 us (the kernel builds and
frees a socket and a file for it), the read 5 us (docs/reliability.md, "Where a
wakeup's cost goes").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

import trio

logger = logging.getLogger("meshgpu.daemon")

ACCEPT_BURST = 64
"""Connections accepted per wakeup at most before other tasks run."""
RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on with a linger time of 0: ``close`` sends an RST and frees the socket."""
NO_LINGER = struct.pack("ii", 0, 0)
"""``SO_LINGER`` off: ``close`` is the normal one (a FIN)."""
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
"""``accept`` errors that pass (trio.serve_listeners' list): wait a moment, go on."""


class _Fileno(Protocol):
    def fileno(self) -> int: ...


class _Socket(Protocol):
    def setsockopt(self, level: int, option: int, value: bytes, /) -> None: ...
    def close(self) -> None: ...


def linger_zero(sock: _Socket | None, on: bool = True) -> None:
    """Make the coming close of ``sock`` an RST (``on``), or a normal close again."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET if on else NO_LINGER)


def reset(sock: _Socket) -> None:
    """Close ``sock`` with an RST."""
    linger_zero(sock)
    sock.close()


def listening_copy(listening: _Fileno) -> socket.socket:
    """A non-blocking stdlib socket on ``listening``'s file (a ``dup``: the copy's
    registrations and options are the listener's own), lingering 0 so that every
    socket accepted from it is born so."""
    raw = socket.socket(fileno=os.dup(listening.fileno()))
    try:
        raw.setblocking(False)
        linger_zero(raw)
    except BaseException:
        raw.close()
        raise
    return raw


async def accept_forever(
    listening: trio.socket.SocketType,
    admit: Callable[[Any], bool],
    admitted: Callable[[socket.socket, Any], None],
) -> None:
    """Accept connections on ``listening`` forever (:func:`accept_queued` each time it
    is readable; a moment's pause when ``accept`` ran out of file descriptors)."""
    raw = listening_copy(listening)
    try:
        fd = listening.fileno()
        # read once: each ``socket`` property converts to an enum in Python
        shape = (raw.family, raw.type, raw.proto)
        while True:
            await trio.lowlevel.wait_readable(fd)
            if not accept_queued(raw, admit, admitted, shape):
                await trio.sleep(0.1)
    finally:
        raw.close()


def accept_queued(
    raw: socket.socket,
    admit: Callable[[Any], bool],
    admitted: Callable[[socket.socket, Any], None],
    shape: tuple[int, int, int] | None = None,
) -> bool:
    """Accept what ``raw``'s queue holds (up to :data:`ACCEPT_BURST`). ``admit(address)``
    decides; a refused connection is closed by its file descriptor, before a socket
    object exists for it (an RST: it lingers 0 from the listener); ``admitted(socket,
    address)`` takes the others as non-blocking stdlib sockets (it must not block: start
    a task, or hold it at a :class:`~meshgpu.first_bytes.FirstBytesGate`) and turns the
    linger off where a connection is to end with a FIN. False when ``accept`` failed for
    want of file descriptors or buffers (logged; the caller waits a moment before the
    next burst); other errors are raised. Invoked by :func:`accept_forever` each time
    the listening socket is readable; ``shape`` is ``raw``'s family, type and protocol,
    where the caller has read them already.

    ``socket.accept`` builds a socket object for every connection, and building one on a
    file descriptor asks the kernel for its address (``getsockname``): a syscall and an
    object for each connection of a flood that is refused unread."""
    accept = raw._accept  # type: ignore[attr-defined]  # socket.accept's own first step
    for _ in range(min(queued(raw), ACCEPT_BURST)):
        try:
            fd, address = accept()
        except BlockingIOError:
            break
        except OSError as error:  # out of file descriptors or buffers
            if error.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            logger.warning("accept failed (%s); retrying in 0.1 s", error)
            return False
        if not admit(address):
            os.close(fd)
            continue
        if shape is None:
            shape = (raw.family, raw.type, raw.proto)
        sock = socket.socket(*shape, fileno=fd)
        sock.setblocking(False)
        admitted(sock, address)
    return True


_TCP_INFO_BYTES = 28
_TCPI_UNACKED = struct.Struct("=I")
"""``tcp_info.tcpi_unacked`` (after eight bytes of state and four 32-bit fields): on a
listening socket, the length of its accept queue."""


def queued(listening: socket.socket) -> int:
    """Connections waiting in ``listening``'s accept queue (:data:`ACCEPT_BURST` where
    the socket cannot say: not TCP, whose sockets refuse the option). Invoked once per
    wakeup of an accept loop: it reads no ``socket`` property (each converts to an enum
    in Python)."""
    try:
        info = listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except OSError:
        return ACCEPT_BURST
    if len(info) < _TCP_INFO_BYTES:
        return ACCEPT_BURST
    return int(_TCPI_UNACKED.unpack_from(info, 24)[0])
