"""The HTTP part of a daemon: hypercorn's trio worker serving the app (app.py).

It runs in the daemon's nursery as one task (``await nursery.start(server.run)``) that
owns what it starts: hypercorn's listeners and connections live in the server's own
nursery and end with it. No second event loop, no thread per request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshgpu.http.settings import HttpSettings

logger = logging.getLogger("meshgpu.http")

READ_TIMEOUT_S = 30.0
"""A client that sends nothing for this long is disconnected (a slow client holds only
its own connection, never the node)."""


class HttpServer:
    """Serves ``app`` on ``host:port`` until cancelled or :meth:`stop`."""

    def __init__(
        self,
        app: Any,
        host: str,
        settings: HttpSettings,
        background: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.app = app
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
        self.config.keep_alive_timeout = 30
        self.config.graceful_timeout = 2.0
        if settings.tls_cert is not None and settings.tls_key is not None:
            self.config.certfile = str(settings.tls_cert)
            self.config.keyfile = str(settings.tls_key)
        self.urls: list[str] = []
        self._stop = trio.Event()

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
                    partial(serve, self.app, self.config, shutdown_trigger=self._stop.wait)
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
