"""Ctrl-C in ``meshgpu submit`` and ``meshgpu collect``: a clean stop, not a traceback.

Without this, SIGINT became trio's KeyboardInterrupt at whatever checkpoint the main
task was at, inside the client's nurseries: a 40-100 line exception group (sometimes
"Nursery stack corrupted"), exit status 1, and no word about the tasks the mesh had
accepted. Now the command owns SIGINT while it talks to the mesh (:func:`owning_sigint`)
and turns it into cancellations it chose:

* the first Ctrl-C cancels the *waiting* (:meth:`Interruption.waiting`): a ``map``
  then gives the submissions already sent a short grace to be answered, and lists what
  it abandoned (meshgpu/client/mapping.py); a ``--no-wait`` batch on the wire gets the
  same grace (:meth:`Interruption.sending`). Outside of both (connecting, uploading the
  model) it stops at once;
* a second Ctrl-C stops everything at once.

The command then prints the ids of the accepted, uncollected tasks (stdout, or the
``--ids`` file) with the ``meshgpu collect`` command that fetches them, and exits with
status 130 (128 + SIGINT, what a shell reports for a process stopped by Ctrl-C).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

EXIT_INTERRUPTED = 130
"""128 + SIGINT: the status a shell reports for a command stopped by Ctrl-C."""


class Interruption:
    """SIGINT as cancellations (see the module docstring). ``requested`` and ``forced``
    say what happened; ``at`` is when the first Ctrl-C came (trio time)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = False
        self.forced = False
        self.at: float | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        """The running loop's token while :func:`run_guarded` runs (signals go there)."""
        self.finished = False
        self._everything = trio.CancelScope()
        self._waiting: trio.CancelScope | None = None
        self._sending: trio.CancelScope | None = None

    def request(self) -> None:
        """Invoked in the trio loop for each SIGINT (:func:`owning_sigint`)."""
        if self.requested:
            self.forced = True
            self._everything.cancel()
            return
        self.requested = True
        self.at = trio.current_time()
        if self._sending is not None:
            self._sending.deadline = min(self._sending.deadline, self.at + self.grace_s)
        if self._waiting is not None:
            self._waiting.cancel()
        elif self._sending is None:
            self._everything.cancel()

    @contextmanager
    def waiting(self) -> Iterator[trio.CancelScope]:
        """A scope the first Ctrl-C cancels (the rest of the command goes on)."""
        with trio.CancelScope() as scope:
            self._waiting = scope
            if self.requested:
                scope.cancel()
            try:
                yield scope
            finally:
                self._waiting = None

    @contextmanager
    def sending(self) -> Iterator[trio.CancelScope]:
        """A request the first Ctrl-C does not cut off: it gets ``grace_s`` to be
        answered (its answer names the tasks the mesh accepted)."""
        with trio.CancelScope(shield=True) as scope:
            self._sending = scope
            if self.requested and self.at is not None:
                scope.deadline = self.at + self.grace_s
            try:
                yield scope
            finally:
                self._sending = None


async def run_guarded(interruption: Interruption, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body()`` with SIGINT (as :func:`owning_sigint` routes it) turned into
    ``interruption``'s cancellations. The body records what it did as it goes: a second
    Ctrl-C cuts it off wherever it is."""
    interruption.token = trio.lowlevel.current_trio_token()
    try:
        with interruption._everything:
            await body()
    finally:
        interruption.token = None
        interruption.finished = True


@contextmanager
def owning_sigint(interruption: Interruption) -> Iterator[None]:
    """Route SIGINT to ``interruption`` for the body (a ``trio.run`` of
    :func:`run_guarded`): a plain handler that hands each signal to the trio loop.

    Rejected: ``trio.open_signal_receiver``. Closed when the work ends, it re-raises a
    signal that arrived in the last moment as KeyboardInterrupt inside trio's own
    tasks: a TrioInternalError traceback, the very thing this module removes. A signal
    before the loop runs interrupts as Python does (nothing was sent yet); one after
    it ended is ignored (the command is printing its summary). Off the main thread (a
    test's CliRunner in a worker thread) nothing can be installed, and nothing is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        token = interruption.token
        if token is None:
            if interruption.finished:
                return
            raise KeyboardInterrupt  # the loop has not started: nothing was sent
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(interruption.request)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
