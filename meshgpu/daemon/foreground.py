"""Running a daemon in the foreground, as ``meshgpu join`` does: signals mean leave.

Invoked with a built daemon (``meshgpu join`` builds it from its settings); what this
module uses of it is :class:`Foreground`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Protocol, TypeVar

import trio

from meshgpu.errors import MeshError

logger = logging.getLogger("meshgpu.daemon")


class Foreground(Protocol):
    """What running in the foreground needs of a daemon."""

    @property
    def ready(self) -> trio.Event:
        """Set once the daemon listens and serves."""
        ...

    @property
    def leaving(self) -> bool:
        """The daemon is leaving the mesh (draining)."""
        ...

    @property
    def stopping(self) -> bool:
        """A stop was requested."""
        ...

    async def run(self) -> None: ...

    def request_stop(self) -> None: ...


D = TypeVar("D", bound=Foreground)


async def serve_until_signalled(daemon: D, started: Callable[[D], None] = lambda d: None) -> None:
    """Run ``daemon`` in the foreground: the first SIGINT/SIGTERM leaves gracefully, a
    second one stops at once. Raises the daemon's fatal error (a MeshError), if any."""
    failures: list[MeshError] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_daemon() -> None:
                try:
                    await daemon.run()
                except MeshError as error:
                    failures.append(error)
                finally:
                    nursery.cancel_scope.cancel()

            async def announce() -> None:
                await daemon.ready.wait()
                started(daemon)

            async def watch_signals() -> None:
                async for signum in signals:
                    if daemon.leaving or daemon.stopping:
                        logger.warning("second signal: stopping now, without draining")
                        nursery.cancel_scope.cancel()
                        return
                    logger.info(
                        "%s: leaving the mesh gracefully (again to force)",
                        signal.Signals(signum).name,
                    )
                    daemon.request_stop()

            nursery.start_soon(run_daemon)
            nursery.start_soon(announce)
            nursery.start_soon(watch_signals)
    if failures:
        raise failures[0]
