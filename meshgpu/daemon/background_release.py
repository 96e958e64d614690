"""Large files and arrays given back to the system off the event loop.

Giving back a GiB is slow here, and the event loop must never wait for it: on the
project's 2-core VM (ext4 mounted with ``discard``) the ``unlink`` of a 1 GiB payload file
took 1.1-1.6 s, and dropping the last reference to a 1 GiB array of our own mapping
(``munmap``) 0.35-0.5 s quiet and 1.4-5.8 s at load 20. Made on the loop, either is a
daemon that answers no probe for that long, and with the mesh's suspicion timeout
(0.3-0.9 s at three nodes) its peers declare it dead and run its tasks again
(docs/daemon.md, "Liveness under large transfers"). So the one who drops such a thing
hands it to :class:`BackgroundRelease` instead, whose thread does the slow part: a file is
renamed out of its place at once (a rename frees no blocks: 0.1 ms) and unlinked there;
a dict of arrays is emptied there, so their last references die there (``munmap``
releases the GIL: the loop of a test process went on with gaps under 70 ms while a
thread freed a GiB).

The thread starts with the first job and ends when the queue is empty (a released
thing is dropped within the call that queued it plus the jobs before it), as
direct_writes.DirectWriter's does; a file still queued when the process ends keeps its
scratch name (``*.tmp``), which the payload store sweeps at its next start. Rejected: a
trio task per release in the data plane's nursery (a writer aborted in a worker thread
must release its file too, and trio's nursery is not to be touched from there); freeing
where it happens and raising the suspicion timeout (a stall still delays every
answer of the node for seconds, and the timeout is the mesh's detection time).
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("meshgpu.daemon")


SMALL_BYTES = 16 << 20
"""Smaller files and arrays are given back at once, by the caller: a range's worth costs
milliseconds, less than a thread's wake-up is worth."""


class BackgroundRelease:
    """Unlinks files and drops objects in a thread of its own, in the order queued.
    Invoked from the event loop or from worker threads (thread-safe)."""

    def __init__(self) -> None:
        self._jobs: collections.deque[Path | dict[Any, Any] | list[Any]] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.released = 0
        """Jobs done so far (files unlinked or objects dropped)."""

    def unlink(self, path: Path, *, rename: bool = True) -> None:
        """Remove ``path``: at once from its place (renamed to a scratch name beside it,
        ``*.tmp``; with ``rename`` False it is one already), its blocks freed by the
        thread; a file of fewer than ``SMALL_BYTES`` on disk is unlinked at once. A
        missing file is no error."""
        try:
            small = path.stat().st_blocks * 512 < SMALL_BYTES
        except FileNotFoundError:
            return
        if small:
            path.unlink(missing_ok=True)
            return
        if rename:
            doomed = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                os.rename(path, doomed)
            except FileNotFoundError:
                return
            path = doomed
        self._queue(path)

    def empty(self, container: dict[Any, Any] | list[Any]) -> None:
        """Empty ``container`` (a dict or list of arrays) in the thread: what it held the
        last reference to (a run's input arrays) is freed there. The caller may keep the
        container itself; what it took out of it before keeps its objects alive. Arrays
        of fewer than ``SMALL_BYTES`` together are let go at once."""
        held = container.values() if isinstance(container, dict) else container
        if sum(int(getattr(thing, "nbytes", 0)) for thing in held) < SMALL_BYTES:
            container.clear()
            return
        self._queue(container)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until every job queued so far is done (tests, and a process about to exit);
        False if ``timeout`` passed first."""
        return self._idle.wait(timeout)

    def _queue(self, job: Any) -> None:
        with self._lock:
            self._jobs.append(job)
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="meshgpu-release", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._thread = None
                    self._idle.set()
                    return
                job = self._jobs.popleft()
            if isinstance(job, Path):
                try:
                    job.unlink(missing_ok=True)
                except OSError as error:  # left as *.tmp: swept at the next start
                    logger.warning("could not remove %s: %s", job, error)
            else:
                job.clear()  # the last references: freed here, not on the loop
            del job
            self.released += 1


SHARED = BackgroundRelease()
"""The process's release thread: the payload store's and the data plane's by default."""
