"""What a test client sees of a server's connection limits: whether a connection was
made at all, and how the server ended it (a FIN or an RST). Shared by the TCP API's and
the HTTP port's limit tests, which accept through one loop (meshgpu/accepting.py)."""

from __future__ import annotations

import trio


async def attempt(address: tuple[str, int], source: str | None = None) -> trio.SocketStream | None:
    """A connection (from ``source``), or None if it was reset before the connect
    returned (a refusal can win the race with the client's connect)."""
    try:
        return await trio.open_tcp_stream(*address, local_address=source)
    except OSError:
        return None


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """True once the server closed ``stream`` (reads end, by a FIN or an RST); waits for it."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def closed_soon(stream: trio.SocketStream) -> bool:
    """True if the server closed ``stream`` (it reads to the end within a moment)."""
    with trio.move_on_after(0.5):
        return await closed_by_server(stream)
    return False


async def how_closed(stream: trio.SocketStream) -> str:
    """``"reset"`` (an RST) or ``"closed"`` (a FIN: the reads end), once the server
    drops ``stream``."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError as error:
        if isinstance(error.__cause__, ConnectionResetError):
            return "reset"
        raise
    return "closed"
