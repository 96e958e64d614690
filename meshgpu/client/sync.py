"""The blocking client: an :class:`AsyncClient` on a trio loop in a background thread.

Decision: one long-lived trio loop per :class:`Client`, in a daemon thread, reached with
``trio.from_thread.run``. The connection, its ``results`` streams, the watchdog and the
failover machinery keep running between the caller's calls, so ``result()`` after
``submit()`` costs no reconnection and a failover can happen while the caller is busy
elsewhere. Rejected: ``trio.run`` per call. It is simpler, but each call would open a new
TCP connection, ask ``status`` and ``has_model`` again and re-request every pending
result; measured on loopback that is several milliseconds per call against a fraction
of a millisecond for a call into a running loop, and the mesh's per-task budget is 2 ms.

Calls are thread-safe: any thread may call any method; they all run on the one loop.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import trio

from meshgpu.client.handles import AsyncTaskHandle, Completed, Outcome, Outputs, wait_seconds
from meshgpu.client.mapping import STOP_GRACE_S, MapInterrupted, MapRun, stopped_map_message
from meshgpu.client.models import ModelBlob
from meshgpu.client.session import AsyncClient
from meshgpu.errors import ClientError, MeshError

logger = logging.getLogger("meshgpu.client")
T = TypeVar("T")
_DONE = object()


class TaskHandle:
    """One submitted task (blocking form): ``handle.result(timeout)``."""

    def __init__(self, client: Client, handle: AsyncTaskHandle) -> None:
        self._client = client
        self._handle = handle

    @property
    def task_id(self) -> str:
        return self._handle.task_id

    @property
    def copies(self) -> int:
        return self._handle.copies

    @property
    def worker(self) -> str | None:
        return self._handle.worker

    def done(self) -> bool:
        return self._handle.done()

    def wait(self, timeout: float | None = None) -> Outcome:
        # A resolved handle (a direct run's, or a result already in) needs no trip
        # through the client's trio thread: its outcome never changes again.
        wait_seconds(timeout)  # refused alike whether the outcome is in or not
        outcome = self._handle.outcome
        if outcome is not None:
            return outcome
        return self._client._run(self._handle.wait, timeout)

    def result(self, timeout: float | None = None) -> Outputs:
        """The outputs by name; raises the task's error, or ResultTimeoutError."""
        wait_seconds(timeout)
        outcome = self._handle.outcome
        if outcome is None:
            return self._client._run(self._handle.result, timeout)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.outputs is not None
        return outcome.outputs

    def __repr__(self) -> str:
        return repr(self._handle)


class Client:
    """A blocking client of a meshgpu mesh; arguments as :class:`AsyncClient`.

    >>> with meshgpu.Client() as client:                       # doctest: +SKIP
    ...     handle = client.submit("digits", {"pixels": batch})
    ...     handle.result(timeout=30)["probabilities"]

    Creating one connects: a ClientError then, not at the first call, when no daemon
    answers (a constructor that succeeds has a peer; ``client.peer`` names it). A client
    never closed is closed at interpreter exit, so the mesh hears that the results it
    received were collected (otherwise they stayed in every holder's table).
    """

    def __init__(self, peer: Any = None, key_file: Any = None, **options: Any) -> None:
        self._async = AsyncClient(peer, key_file, **options)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="meshgpu-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        # Its own callable (atexit.unregister drops every registration equal to it),
        # holding the client weakly.
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def _loop(self) -> None:
        async def main() -> None:
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            async with self._async:
                self._ready.set()
                await self._stop.wait()

        try:
            trio.run(main)
        except BaseException as error:  # handed to the caller's thread, not lost
            self._error = error
        finally:
            self._ready.set()

    def _run(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._token is None or not self._thread.is_alive():
            raise ClientError("this meshgpu client is closed")
        return trio.from_thread.run(function, *args, trio_token=self._token)

    # --- the public API (see AsyncClient for the arguments) ---------------------------

    def submit(self, model: Any, inputs: Mapping[str, Any], **options: Any) -> TaskHandle:
        """Submit one task; returns once the mesh acknowledged it."""

        async def submit() -> AsyncTaskHandle:
            return await self._async.submit(model, inputs, **options)

        return TaskHandle(self, self._run(submit))

    def catalog_model(self, name: str) -> ModelBlob:
        """The mesh catalog's model ``name``, to submit like a file."""
        return self._run(self._async.catalog_model, name)

    def submit_many(
        self, model: Any, many_inputs: Iterable[Mapping[str, Any]], **options: Any
    ) -> list[TaskHandle | MeshError]:
        """Submit many tasks in batched requests; a handle or the refusal per input."""

        async def submit_many() -> list[AsyncTaskHandle | MeshError]:
            return await self._async.submit_many(model, many_inputs, **options)

        return [
            answer if isinstance(answer, MeshError) else TaskHandle(self, answer)
            for answer in self._run(submit_many)
        ]

    def attach(self, task_id: str) -> TaskHandle:
        """A handle for a task submitted earlier (e.g. by ``meshgpu submit --no-wait``)."""

        async def attach() -> AsyncTaskHandle:
            return self._async.attach(task_id)

        return TaskHandle(self, self._run(attach))

    def map(
        self, model: Any, many_inputs: Iterable[Mapping[str, Any]], **options: Any
    ) -> Iterator[Completed]:
        """One task per input map; yields :class:`Completed` items as tasks finish.

        Stopped early (a ``break``, an error, Ctrl-C), the map ends within about a
        second: the tasks the mesh accepted and this loop never took stay in the mesh,
        listed by :meth:`uncollected` and in a warning with the command that fetches
        them; Ctrl-C inside the loop raises :class:`MapInterrupted` (a KeyboardInterrupt)
        that carries them."""
        raise_errors = options.pop("raise_errors", True)
        window = options.pop("window", 64)
        group = options.pop("group", None)
        label = options.pop("label", None)
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        scope = trio.CancelScope()
        run = MapRun()
        pumped = threading.Event()
        client = self._async

        async def pump() -> None:
            # One hand-off between the threads per burst of results, not per item.
            try:
                with scope:
                    mapped = client._map(run, model, many_inputs, window, group, label, options)
                    async with contextlib.aclosing(mapped):
                        async for chunk in mapped:
                            chunks.put(chunk)
            except BaseException as error:
                chunks.put(error)
                raise
            finally:
                chunks.put(_DONE)
                pumped.set()

        async def start() -> None:
            assert client._nursery is not None
            client._nursery.start_soon(_swallow, pump)

        self._run(start)
        taken: list[Completed] = []  # yielded from the current burst, not acknowledged yet
        interrupted = finished = False
        try:
            while (chunk := chunks.get()) is not _DONE:
                if isinstance(chunk, BaseException):
                    raise chunk
                for item in chunk:
                    taken.append(item)
                    if item.error is not None and raise_errors:
                        raise item.error
                    yield item
                self._call_soon(client._taken, run, taken)
                taken = []
            finished = True
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if self._thread.is_alive() and self._token is not None:
                if taken:
                    self._call_soon(client._taken, run, taken)
                self._call_soon(scope.cancel)
                pumped.wait(STOP_GRACE_S + 1.0)
                if not finished:  # stopped early (Ctrl-C must stop within a second)
                    client.flush_timeout = min(client.flush_timeout, 0.5)
                # Only now, with this loop done reading: the pump finished when it had
                # queued the last burst, before this loop took it.
                self._call_soon(client._consumer_stopped, run)
            else:  # the client was closed under this loop: its trio loop is gone
                client._consumer_stopped(run)
            # This map's own: a slice of the client's list from this map's start also
            # held what maps in other threads abandoned meanwhile, named as this one's.
            left = run.abandoned
            if left:
                logger.warning("%s", stopped_map_message(left, run.unanswered))
        if interrupted:
            raise MapInterrupted(left, run.unanswered)

    def uncollected(self) -> list[tuple[str, str | None]]:
        """(task id, label) of the tasks stopped maps left in the mesh, uncollected."""
        return self._async.uncollected()

    def _call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(function, *args, trio_token=self._token)

    def status(self) -> dict[str, Any]:
        return self._run(self._async.status)

    def tasks(self, state: str | None = None) -> list[dict[str, Any]]:
        return self._run(self._async.tasks, state)

    @property
    def peer(self) -> Any:
        return self._async.peer

    @property
    def failovers(self) -> list[Any]:
        return list(self._async.failovers)

    def close(self) -> None:
        """Send outstanding acknowledgements, close the connection, stop the loop."""
        atexit.unregister(self._at_exit)
        if self._stop is not None and self._token is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):  # already stopped
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()
        if self._error is not None and not isinstance(self._error, trio.Cancelled):
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _close_at_exit(client: weakref.ref[Client]) -> None:
    """Close a client its program left open, at interpreter exit (before the daemon
    thread of its loop is stopped mid-way): the acknowledgements of the results it
    handed out are sent, within its ``flush_timeout``."""
    alive = client()
    if alive is None:
        return
    try:
        alive.close()
    except Exception as error:  # exiting anyway: say why the close failed
        logger.warning("closing the meshgpu client at exit: %s", error)


async def _swallow(function: Callable[[], Awaitable[None]]) -> None:
    """Run ``function``; its error already went to the sync caller through the queue."""
    with contextlib.suppress(Exception):
        await function()
