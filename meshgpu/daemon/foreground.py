"""Running a daemon in the foreground, as ``meshgpu join`` does: signals mean leave."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

from meshgpu.daemon.runtime import Daemon
from meshgpu.daemon.settings import DaemonSettings
from meshgpu.errors import MeshError

logger = logging.getLogger("meshgpu.daemon")


async def serve_until_signalled(
    settings: DaemonSettings, started: Callable[[Daemon], None] = lambda daemon: None
) -> None:
    """Run a daemon in the foreground: the first SIGINT/SIGTERM leaves gracefully, a
    second one stops at once. Raises the daemon's fatal error (a MeshError), if any."""
    daemon = Daemon(settings)
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
                    if daemon.leaving or daemon._stop.is_set():
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
