"""The HTTP part of a daemon: hypercorn's trio worker serving the app (app.py).

It runs in the daemon's nursery as one task (``await nursery.start(server.run)``) that
owns what it starts: hypercorn's listeners and connections live in the server's own
nursery and end with it. No second event loop, no thread per request. Connections are
bounded in number, per address and in how long a request head may take
(connections.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import h11
import trio
from hypercorn.config import Config

from meshgpu.http.connections import ConnectionLimits, serve
from meshgpu.http.settings import HttpSettings

logger = logging.getLogger("meshgpu.http")


READ_TIMEOUT_S = 30.0
"""A client that sends nothing for this long is disconnected (a slow client holds only
its own connection, never the node)."""


def send_head_with_body() -> None:
    """Have hypercorn's HTTP/1.1 protocol write a response's head in the same send as its
    body, for responses whose length is known (``Content-Length``: every answer of the
    app but the dashboard's event stream, whose head goes at once as before).

    Why: hypercorn (0.18) sends the head and the body in two writes. On loopback each
    write wakes the client, and on a loaded machine each wake-up may cost the server its
    core (the woken client runs first): at concurrency 1, one write instead of two cut
    the entry node's p50 by about a seventh (docs/benchmarks.md). Invoked once, when the
    first HTTP server is built; it replaces ``H11Protocol.stream_send`` with a wrapper
    that holds the head's bytes (the h11 connection has already taken the event) and
    hands every other event to the original, the held head first. Rejected: a stream
    wrapper that buffers writes (hypercorn builds its streams itself), TCP_CORK (one more
    syscall per response, and the uncork is the same second write)."""
    from hypercorn.events import RawData
    from hypercorn.protocol import h11 as hypercorn_h11
    from hypercorn.protocol.events import Body, EndBody, Response

    protocol = hypercorn_h11.H11Protocol
    original = protocol.stream_send
    if getattr(original, "sends_head_with_body", False):
        return

    async def stream_send(self: Any, event: Any) -> None:
        held: bytes | None = getattr(self, "_held_head", None)
        if (
            held is None
            and isinstance(event, Response)
            and event.status_code >= 200
            and any(name.lower() == b"content-length" for name, _ in event.headers)
        ):
            headers = [*event.headers, *self.config.response_headers("h11")]
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            self._held_head = _h11_bytes(
                self, h11.Response(headers=headers, status_code=event.status_code)
            )
            return
        if held is None:
            await original(self, event)
            return
        self._held_head = None
        if isinstance(event, (Body, EndBody)):
            more = _h11_bytes(
                self, h11.Data(data=event.data) if isinstance(event, Body) else h11.EndOfMessage()
            )
            await self.send(RawData(data=held + more))
            return
        await self.send(RawData(data=held))
        await original(self, event)

    stream_send.sends_head_with_body = True  # type: ignore[attr-defined]
    protocol.stream_send = stream_send  # type: ignore[method-assign]  # the patch itself


def _h11_bytes(protocol: Any, event: Any) -> bytes:
    """What hypercorn's ``_send_h11_event`` would send for ``event`` (b"" where it sends
    nothing: a connection whose peer broke the protocol)."""
    try:
        return protocol.connection.send(event) or b""
    except h11.LocalProtocolError:
        if protocol.connection.their_state != h11.ERROR:
            raise
        return b""


class HttpServer:
    """Serves ``app`` on ``host:port`` until cancelled or :meth:`stop`."""

    def __init__(
        self,
        app: Any,
        host: str,
        settings: HttpSettings,
        background: Sequence[Callable[[], Awaitable[None]]] = (),
        counters: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.limits = ConnectionLimits(
            {} if counters is None else counters,
            max_connections=settings.max_connections,
            max_connections_per_client=settings.max_connections_per_client,
            header_timeout_s=settings.header_timeout_s,
            max_body_bytes=settings.max_body_bytes,
        )
        """The connection bounds; its counters are ``http_*`` (the daemon's, if given)."""
        self.background = background
        """Tasks that live as long as the server (the dashboard's watcher)."""
        self.host = host
        self.tls = settings.tls_cert is not None
        self.settings = settings
        self.config = Config()
        bracketed = f"[{host}]" if ":" in host else host
        self.config.bind = [f"{bracketed}:{settings.port}"]
        self.config.accesslog = None
        self.config.errorlog = logging.getLogger("meshgpu.http.hypercorn")
        self.config.read_timeout = int(READ_TIMEOUT_S)
        # hypercorn keeps a connection whose client has gone until this idle timer ends;
        # its default (5 s) ends them before the head deadline (connections.py) would.
        self.config.keep_alive_timeout = 5
        self.config.graceful_timeout = 2.0
        if settings.tls_cert is not None and settings.tls_key is not None:
            self.config.certfile = str(settings.tls_cert)
            self.config.keyfile = str(settings.tls_key)
        self.urls: list[str] = []
        self._stop = trio.Event()
        send_head_with_body()

    @property
    def port(self) -> int | None:
        if not self.urls:
            return None
        return int(self.urls[0].rsplit(":", 1)[1])

    def stop(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            try:
                self.urls = await nursery.start(
                    partial(
                        serve, self.app, self.config, self.limits, shutdown_trigger=self._stop.wait
                    )
                )
            except OSError as error:
                # The mesh node is worth more than its HTTP port: it keeps serving the mesh.
                logger.error(
                    "cannot listen for HTTP on %s (%s); this node serves no HTTP "
                    "(choose another --http-port, or 0 for none)",
                    self.config.bind[0],
                    error.strerror or error,
                )
                task_status.started([])
                return
            for run in self.background:
                nursery.start_soon(run)
            task_status.started(self.urls)
