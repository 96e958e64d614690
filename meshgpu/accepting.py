"""Accepting TCP connections under a flood: the loop both the TCP API
(daemon/api.py) and the HTTP port (http/connections.py) run in front of their handlers.

Each wakeup of :func:`accept_forever` takes every connection the kernel holds (up to
:data:`ACCEPT_BURST`) with plain non-blocking ``accept`` calls, and decides on the address
``accept`` returns: a refused connection is reset there and then (``SO_LINGER`` 0: an
RST, and no socket left in ``TIME_WAIT`` on this side), before a stream, a TLS session
or a task exists for it. trio's own ``accept`` takes two trips through the scheduler
per connection; under a flood of reconnects (hundreds a second to each daemon of a mesh
that shares a core) those trips, not the refusals, were most of what the flood cost.
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


async def accept_forever(
    listening: trio.socket.SocketType,
    admit: Callable[[Any], bool],
    admitted: Callable[[socket.socket, Any], None],
) -> None:
    """Accept connections on ``listening`` forever: ``admit(address)`` decides (a refused
    connection is reset at once), ``admitted(socket, address)`` takes the others, as
    non-blocking stdlib sockets (it must not block: start a task, or hand the socket to
    a :class:`~meshgpu.first_bytes.FirstBytesGate`)."""
    raw = socket.socket(fileno=os.dup(listening.fileno()))  # the same listening socket
    try:
        raw.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(listening)
            for _ in range(ACCEPT_BURST):
                try:
                    sock, address = raw.accept()
                except BlockingIOError:
                    break
                except OSError as error:  # out of file descriptors or buffers
                    if error.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    logger.warning("accept failed (%s); retrying in 0.1 s", error)
                    await trio.sleep(0.1)
                    break
                if not admit(address):
                    reset(sock)
                    continue
                sock.setblocking(False)
                admitted(sock, address)
    finally:
        raw.close()
