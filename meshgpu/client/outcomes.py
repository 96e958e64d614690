"""How outcomes come back to the client: tracked handles, ``results`` streams, acks.

A mixin of :class:`~meshgpu.client.session.AsyncClient` (which owns the state named
below and runs these as its link's tasks):

* every submitted task's handle is tracked (``_track``) until its first outcome arrives
  (``_deliver``); later copies of an outcome are counted and dropped, so each handle
  resolves exactly once whatever the mesh sends;
* the result requester (``_request_results``) opens one ``results`` stream per batch of
  task ids the current link has not been asked for: on a new link every unresolved id,
  then only ids tracked since;
* the acknowledger (``_acknowledge``) sends ``collected`` for the outcomes the client
  holds (a task group once, when it holds every member), so the mesh can drop inputs and
  results;
* a large result is fetched while its task's result is stored, when the entry says it
  is ``storing`` (``_fetch_early``), and delivered only once the task's ``done`` came
  (docs/daemon.md, "The client's fetch overlaps the storing");
* ``_give_up`` resolves every open handle as lost when no peer answers any more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import trio

from meshgpu.client.handles import AsyncTaskHandle, Outcome
from meshgpu.client.link import Link, Signal
from meshgpu.daemon.blobs import TensorReceiver
from meshgpu.daemon.payloads import tensors_from_bytes
from meshgpu.daemon.rpc import RpcConnection
from meshgpu.daemon.transfers import pull
from meshgpu.errors import ClientError, DecodeError, MeshError, RequestFailedError, TaskFailedError

logger = logging.getLogger("meshgpu.client")

ACK_BATCH = 512
"""Most task ids in one ``collected`` request."""


class EarlyFetch:
    """A large result fetched while its task's result is being stored (the entry said
    ``storing``): its outputs, or why there are none, once ``ended`` is set. The outputs
    are delivered only when the task's ``done`` comes; until then they are not the
    task's result (a task whose result could not be stored fails, and they go)."""

    def __init__(self, size: int, attempt: int | None) -> None:
        self.size = size
        self.attempt = attempt
        """The attempt whose result is fetched (``storing`` says): only the ``done`` of
        the same attempt delivers it (a newer attempt of a nondeterministic model stores
        other bytes of the same size)."""
        self.ended = trio.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: str | None = None
        self.scope = trio.CancelScope()


class OutcomeStreams:
    """Tracking handles and streaming their outcomes (mixed into ``AsyncClient``)."""

    _handles: dict[str, AsyncTaskHandle]
    _unresolved: set[str]
    _fresh: list[str]
    """Task ids tracked since the link last looked (``_request_results``)."""
    _to_ack: set[str]
    _work: Signal
    _link_changed: Signal
    _fatal: ClientError | None
    duplicates: int
    chunk_bytes: int
    _collectable: Callable[[str, bool], str | None]
    """Which id to acknowledge for a first or repeated outcome (task groups: batches.py)."""
    _forget_groups: Callable[[Iterable[str]], list[str]]
    _abandoned: dict[str, str | None]
    _early: dict[str, EarlyFetch]
    """Results being fetched while their tasks' results are stored, by task id."""

    def _track(self, handle: AsyncTaskHandle) -> AsyncTaskHandle:
        self._handles[handle.task_id] = handle
        if self._fatal is not None:
            handle.resolve(Outcome(handle.task_id, "lost", None, error=self._fatal))
        elif not handle.done():
            self._unresolved.add(handle.task_id)
            self._fresh.append(handle.task_id)
            self._work.fire()
        return handle

    def _deliver(self, outcome: Outcome, *, from_mesh: bool = True) -> None:
        """Resolve a handle with its outcome. Only an outcome the mesh sent
        (``from_mesh``) is acknowledged: one the client made up because a request
        failed leaves the result in the mesh, to be collected later."""
        handle = self._handles.get(outcome.task_id)
        first = handle is not None and handle.resolve(outcome)
        if not first:
            self.duplicates += 1
        self._unresolved.discard(outcome.task_id)
        if first and from_mesh:
            assert handle is not None
            handle.from_mesh = True
        if handle is not None and handle.deferred:
            self._work.fire()
            return  # the caller says when it has stored it (collected)
        if from_mesh:
            collect = self._collectable(outcome.task_id, first)  # a group: once, when complete
            if collect is not None:
                self._to_ack.add(collect)
        self._work.fire()

    def collected(self, task_ids: Iterable[str]) -> None:
        """Tell the mesh (in the background, batched) that the caller has stored the
        outcomes of these deferred tasks (``submit_many(acknowledge=False)``,
        ``attach(acknowledge=False)``); it may drop their inputs and results. A member
        of one of this client's task groups counts towards its group, named once when
        complete. An outcome the client made up (a refused request, the mesh lost) is
        not acknowledged: the result stays in the mesh."""
        for task_id in task_ids:
            handle = self._handles.get(task_id)
            if handle is not None:
                if not handle.from_mesh or handle.acknowledged:
                    continue  # made up here, or named before (a repeat counts nothing)
                handle.acknowledged = True
            collect = self._collectable(task_id, True)
            if collect is not None:
                self._to_ack.add(collect)
        self._work.fire()

    def _abandon(self, handles: Iterable[AsyncTaskHandle]) -> None:
        """Give up on deferred tasks nobody will take (a stopped ``map``): never
        acknowledge them, stop counting their groups (acknowledging the members already
        taken one by one), and list them in ``uncollected``."""
        handles = list(handles)
        for handle in handles:
            handle.deferred = True  # an outcome arriving from now on is not acknowledged
            self._abandoned[handle.task_id] = handle.label
            self._unresolved.discard(handle.task_id)
        self._to_ack.update(self._forget_groups(h.task_id for h in handles))
        self._work.fire()

    async def _request_results(self, link: Link) -> None:
        """Open a ``results`` stream for every task id this link has not asked for yet."""
        assert link.nursery is not None
        # A new link asks for everything unresolved; then only for ids tracked since (a
        # set difference with every unresolved id on each wake-up cost a map of a few
        # thousand tasks in flight a tenth of the client's CPU).
        self._fresh.clear()
        wanted = sorted(self._unresolved - link.requested)
        while True:
            if wanted:
                link.requested.update(wanted)
                link.nursery.start_soon(self._stream_results, link, wanted)
            await self._work.wait()
            fresh, self._fresh = self._fresh, []
            unresolved, requested = self._unresolved, link.requested
            wanted = [t for t in dict.fromkeys(fresh) if t in unresolved and t not in requested]

    async def _stream_results(self, link: Link, task_ids: list[str]) -> None:
        retry: list[str] = []
        try:
            async for message in link.rpc.stream("results", task_ids=task_ids, early=True):
                task_id = message.get("task_id")
                if task_id is None:
                    break
                if message.get("state") == "storing":
                    size, attempt = message.get("result_bytes"), message.get("attempt")
                    self._start_early(link, str(task_id), size, attempt)
                    continue
                if message.get("state") != "done" or message.get("result_bytes") is None:
                    self._drop_early(str(task_id))  # not a large result to deliver
                if message.get("state") == "unavailable":
                    logger.info("%s: %s; asking again", task_id, message.get("reason"))
                    retry.append(task_id)
                    continue
                if message.get("state") == "done" and message.get("result_bytes") is not None:
                    assert link.nursery is not None
                    link.nursery.start_soon(self._fetch_large, link, message)
                    continue
                self._deliver(Outcome.from_message(message))
        except RequestFailedError as error:
            # The peer refuses these ids (not ours to fix by reconnecting): fail them,
            # without telling the mesh they were collected (their results stay there).
            for task_id in task_ids:
                if task_id in self._unresolved:
                    self._deliver(Outcome(task_id, "failed", None, error=error), from_mesh=False)
            return
        except ClientError as error:
            link.fail(str(error))
            return
        if retry:
            await trio.sleep(0.5)
            link.requested.difference_update(retry)
            self._fresh.extend(retry)
            self._work.fire()

    def _start_early(self, link: Link, task_id: str, size: Any, attempt: Any) -> None:
        """The entry is storing ``task_id``'s result (``size`` bytes) of ``attempt``: fetch
        it now (an older attempt's fetch goes)."""
        if not isinstance(size, int) or task_id not in self._unresolved:
            return
        attempt = attempt if isinstance(attempt, int) else None
        known = self._early.get(task_id)
        if known is not None and known.attempt == attempt:
            return
        self._drop_early(task_id)
        early = self._early[task_id] = EarlyFetch(size, attempt)
        assert link.nursery is not None
        link.nursery.start_soon(self._fetch_early, link, task_id, early)

    def _drop_early(self, task_id: str) -> None:
        early = self._early.pop(task_id, None)
        if early is not None:
            early.scope.cancel()

    async def _fetch_early(self, link: Link, task_id: str, early: EarlyFetch) -> None:
        """Fetch a result while it is stored (get_result with ``early``); kept in
        ``early`` for the task's ``done`` (``_fetch_large`` delivers it then)."""
        try:
            with early.scope:
                early.outputs = await fetch_result(  # its attempt's bytes only
                    link.rpc,
                    task_id,
                    early.size,
                    self.chunk_bytes,
                    early=True,
                    attempt=early.attempt,
                )
            if early.scope.cancelled_caught:
                early.error = "stopped"
        except MeshError as error:  # the early path failed: fetched after done instead
            early.error = str(error) or type(error).__name__
        finally:
            early.ended.set()

    async def _fetch_large(self, link: Link, message: dict[str, Any]) -> None:
        """Fetch a result too large for the ``results`` stream in ranges (get_result),
        then deliver it; on a failure the task is asked for again, never acknowledged.
        A result fetched while it was stored (``_fetch_early``) is delivered now, its
        task being done, if that fetch got it whole."""
        task_id = str(message["task_id"])
        early = self._early.pop(task_id, None)
        if early is not None:
            await early.ended.wait()
            same = early.size == message["result_bytes"]
            if early.outputs is not None and same and early.attempt == message.get("attempt"):
                outcome = Outcome(task_id, "done", message.get("worker"), outputs=early.outputs)
                self._deliver(outcome)
                return
            logger.info("%s: result not fetched early (%s); fetching it", task_id, early.error)
        try:
            attempt = message.get("attempt")
            outputs = await fetch_result(
                link.rpc,
                task_id,
                int(message["result_bytes"]),
                self.chunk_bytes,
                attempt=attempt if isinstance(attempt, int) else None,
            )
        except RequestFailedError as error:
            logger.info("%s: result not fetched (%s); asking again", task_id, error)
            await trio.sleep(0.5)
            link.requested.discard(task_id)
            self._fresh.append(task_id)
            self._work.fire()
            return
        except ClientError as error:
            link.fail(str(error))
            return
        except MeshError as error:  # a result that is not a tensor map: the task's answer
            outcome = Outcome(
                task_id,
                "failed",
                message.get("worker"),
                error=TaskFailedError(task_id, f"result unreadable: {error}"),
            )
            self._deliver(outcome, from_mesh=False)
            return
        self._deliver(Outcome(task_id, "done", message.get("worker"), outputs=outputs))

    async def _acknowledge(self, link: Link) -> None:
        """Tell the mesh which outcomes the client has (``collected``), in batches."""
        while True:
            if not self._to_ack:
                await self._work.wait()
                continue
            await trio.sleep(0.01)  # let a burst of outcomes share one request
            batch = sorted(self._to_ack)[:ACK_BATCH]
            try:
                await link.rpc.call("collected", task_ids=batch)
            except RequestFailedError as error:
                logger.warning("peer refused to mark %d results collected: %s", len(batch), error)
            except ClientError as error:
                link.fail(str(error))
                return
            self._to_ack.difference_update(batch)
            self._work.fire()

    def _give_up(self, why: str) -> None:
        self._fatal = ClientError(why)
        for task_id in list(self._unresolved):
            handle = self._handles[task_id]
            handle.resolve(Outcome(task_id, "lost", None, error=self._fatal))
        self._unresolved.clear()
        self._link_changed.fire()
        self._work.fire()


READ_RESTARTS = 3
"""How often a fetch in ranges starts again when a range names another attempt than the
first one did (a newer attempt installed on a holder mid-read, holders that keep
different attempts); then it fails, and the task is asked for again."""


class _AttemptChanged(MeshError):
    """A range of a result named another attempt than the first range of the fetch."""

    def __init__(self, task_id: str, pinned: int | None, named: int | None) -> None:
        super().__init__(f"result of {task_id}: attempt {named}'s range in attempt {pinned}'s")
        self.named = named


async def fetch_result(
    rpc: RpcConnection,
    task_id: str,
    size: int,
    chunk: int,
    *,
    early: bool = False,
    attempt: int | None = None,
) -> dict[str, np.ndarray]:
    """A result of ``size`` bytes from the entry peer in ranges (a window of them in
    flight: transfers.pull), each copied straight into the result's arrays as it comes
    (blobs.TensorReceiver: one copy of each array in memory, no scratch file). With
    ``early``: while it is stored on the entry (early_results.py). With ``attempt`` (the
    one the task's ``done`` names): that attempt's bytes or a newer one's
    (core/tasks/result_push.py, ``serves_result``). Every range answer names the attempt
    whose bytes it holds; the fetch asks for the one the first answer named, and starts
    again for the attempt a later answer names if it differs (``READ_RESTARTS`` times;
    an early fetch fails at once and is fetched again after ``done``): a result is
    never assembled from two attempts' bytes. ``size`` is held against the ranges only
    when they name ``attempt``: another attempt's outputs may be of another size."""
    announced = size
    for _ in range(0 if early else READ_RESTARTS + 1):
        try:
            return await _fetch_one_attempt(
                rpc, task_id, announced, chunk, early=False, attempt=attempt
            )
        except _AttemptChanged as changed:
            logger.info("%s; fetching it again", changed)
            attempt, announced = changed.named, -1  # another attempt's size may differ
    if early:
        return await _fetch_one_attempt(rpc, task_id, size, chunk, early=True, attempt=attempt)
    raise RequestFailedError(
        f"the result of {task_id} changed attempts {READ_RESTARTS + 1} times while it was fetched",
        kind="ResultAttemptChanged",
    )


async def _fetch_one_attempt(
    rpc: RpcConnection,
    task_id: str,
    size: int,
    chunk: int,
    *,
    early: bool,
    attempt: int | None,
) -> dict[str, np.ndarray]:
    """One try of :func:`fetch_result`: raises _AttemptChanged when a range names
    another attempt than the first (``size`` -1: any size)."""
    extra: dict[str, Any] = {"early": True} if early else {}
    pinned: list[int | None] = []
    """The attempt the first range's answer named."""

    async def call(offset: int, length: int) -> dict[str, Any]:
        asked = pinned[0] if pinned and pinned[0] is not None else attempt
        reply = await rpc.call(
            "get_result",
            task_id=task_id,
            offset=offset,
            length=length,
            relay=True,
            **extra,
            **({} if asked is None else {"attempt": asked}),
        )
        named = reply.get("attempt")
        named = named if isinstance(named, int) else None
        if not pinned:
            pinned.append(named)
        elif named != pinned[0]:
            raise _AttemptChanged(task_id, pinned[0], named)
        return reply

    data, receiver = await pull(call, chunk, TensorReceiver)
    if receiver is None:
        assert data is not None
        return {name: array.copy() for name, array in tensors_from_bytes(data).items()}
    # The size announced is that of the attempt ``done`` named (or of the one the entry
    # served at ``done``): ranges of another attempt (a newer one installed since, whose
    # outputs may be of another size) are held to their own size alone, as pull does.
    if size >= 0 and pinned[0] == attempt and receiver.size != size:
        raise DecodeError(f"result of {task_id} was announced as {size} bytes, got {receiver.size}")
    return receiver.tensors()
