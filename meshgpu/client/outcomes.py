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
* ``_give_up`` resolves every open handle as lost when no peer answers any more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from meshgpu.client.handles import AsyncTaskHandle, Outcome
from meshgpu.client.link import Link, Signal
from meshgpu.errors import ClientError, RequestFailedError

logger = logging.getLogger("meshgpu.client")

ACK_BATCH = 512
"""Most task ids in one ``collected`` request."""


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
    _collectable: Callable[[str, bool], str | None]
    """Which id to acknowledge for a first or repeated outcome (task groups: batches.py)."""

    def _track(self, handle: AsyncTaskHandle) -> AsyncTaskHandle:
        self._handles[handle.task_id] = handle
        if self._fatal is not None:
            handle.resolve(Outcome(handle.task_id, "lost", None, error=self._fatal))
        elif not handle.done():
            self._unresolved.add(handle.task_id)
            self._fresh.append(handle.task_id)
            self._work.fire()
        return handle

    def _deliver(self, outcome: Outcome) -> None:
        handle = self._handles.get(outcome.task_id)
        first = handle is not None and handle.resolve(outcome)
        if not first:
            self.duplicates += 1
        self._unresolved.discard(outcome.task_id)
        collect = self._collectable(outcome.task_id, first)  # a group: once, when complete
        if collect is not None:
            self._to_ack.add(collect)
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
            async for message in link.rpc.stream("results", task_ids=task_ids):
                task_id = message.get("task_id")
                if task_id is None:
                    break
                if message.get("state") == "unavailable":
                    logger.info("%s: %s; asking again", task_id, message.get("reason"))
                    retry.append(task_id)
                    continue
                self._deliver(Outcome.from_message(message))
        except RequestFailedError as error:
            # The peer refuses these ids (not ours to fix by reconnecting): fail them.
            for task_id in task_ids:
                if task_id in self._unresolved:
                    self._deliver(Outcome(task_id, "failed", None, error=error))
            return
        except ClientError as error:
            link.fail(str(error))
            return
        if retry:
            await trio.sleep(0.5)
            link.requested.difference_update(retry)
            self._fresh.extend(retry)
            self._work.fire()

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
