"""Results on the data plane: a run's result stored before its task is done, and read
back for clients (a mixin of :class:`~meshgpu.daemon.dataplane.DataPlane`).

* ``_result_source``: a small result stays in memory; a large one is pushed in ranges
  from the outputs' memory while it spills to this node's payload store (the worker's
  copy), the two at once;
* ``_push_result``: to the task's holders, then, while no node but the worker confirmed
  it, to further live members, in up to ``PUSH_ROUNDS`` rounds (docs/daemon.md, "Storing
  the result is part of finishing the task");
* ``result_head``/``result_range``: the result, or a range of it, from our store or a
  live result holder (the entry node's relay for its clients);
* ``sweep_results``: the worker's own copies go once their task is delivered, early
  results no client took (early_results.py) after a while.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshgpu.core.membership import MemberInfo
from meshgpu.core.tasks import TaskId
from meshgpu.core.tasks.result_push import (
    PUSH_ROUNDS,
    keeps_own_copy,
    kept,
    needs_another_holder,
    owes_own_copy,
    retry_delay,
    round_targets,
    serves_result,
)
from meshgpu.core.types import NodeId
from meshgpu.daemon.auth.envelope import Buffer
from meshgpu.daemon.blobs import TensorBlob, chunk_bytes
from meshgpu.daemon.payloads import canonical_tensor_bytes
from meshgpu.daemon.transfers import PutCall, ResultSource, range_answer, read_blob
from meshgpu.daemon.transfers import push as push_ranges
from meshgpu.errors import MeshError

if TYPE_CHECKING:
    from meshgpu.daemon.early_results import EarlyResults
    from meshgpu.daemon.payloads import PayloadStore
    from meshgpu.daemon.rpc import ConnectionPool
    from meshgpu.daemon.status import TaskLookup

logger = logging.getLogger("meshgpu.daemon")

RESULT = "result"
TRANSFER_TIMEOUT = 30.0
"""The longest one request of a transfer between nodes may take."""


def task_key(task_id: TaskId) -> tuple[str, int]:
    return (task_id.origin, task_id.sequence)


class Members(Protocol):
    """What the data plane reads of the node: the members it knows (their addresses)
    and those it holds live."""

    def members(self) -> Mapping[NodeId, MemberInfo]: ...

    def live_members(self) -> Iterable[NodeId]: ...


class ResultPlane:
    """Storing, pushing and reading back results (mixed into ``DataPlane``)."""

    node_id: NodeId
    node: Members
    peers: ConnectionPool
    payloads: PayloadStore
    early: EarlyResults
    max_frame_bytes: int
    _task_entry: TaskLookup
    _count: Callable[[str], None]

    @property
    def chunk(self) -> int:
        """The largest range of a payload in one request (blobs.chunk_bytes)."""
        return chunk_bytes(self.max_frame_bytes)

    def _live(self, node_ids: Iterable[NodeId]) -> list[NodeId]:
        raise NotImplementedError

    async def _request(self, node_id: NodeId, op: str, **fields: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def store(self, key: Any, kind: str, data: bytes, *, wait: bool) -> None:
        raise NotImplementedError

    def transfer_link(self, node_id: NodeId) -> AbstractAsyncContextManager[PutCall]:
        """Requests to ``node_id`` on a connection of their own, for the ranges of one
        payload larger than a range (rpc.ConnectionPool.dedicated)."""
        info = self.node.members().get(node_id)
        if info is None:
            raise MeshError(f"no address known for {node_id}")
        return self.peers.dedicated(info.address, timeout=TRANSFER_TIMEOUT)

    async def _result_source(
        self, task_id: TaskId, outputs: dict[str, Any], attempt: int
    ) -> ResultSource:
        """The result of a run, ready to push: a small one as bytes; a large one is read
        from the outputs' memory while it spills to this node's payload store (the
        worker's own copy; ``_push_result`` runs the spill beside the pushes, and the
        last range of each push waits for the spill's digest). A spill that fails (a
        full disk) leaves the result in memory only, which it is pushed from."""
        blob = TensorBlob(outputs)
        if blob.size <= self.chunk:
            return ResultSource.of_bytes(canonical_tensor_bytes(outputs))
        spill = _ResultSpill(blob, self.payloads, task_key(task_id), task_id, attempt)

        async def read(offset: int, length: int) -> Buffer:
            if offset + length >= blob.size:  # the last range goes with the digest
                await spill.wait()
            return await read_blob(blob, offset, length)

        return ResultSource(blob.size, spill.sha256, read, stored_here=False, spill=spill)

    async def _push_result(
        self, task_id: TaskId, attempt: int, result: ResultSource, holders: Iterable[NodeId]
    ) -> tuple[tuple[NodeId, ...], list[str]]:
        """Store the result on every live holder; returns those that confirmed, and why
        the others did not. Storing is part of finishing the task: while no node other
        than this one confirmed, the result goes to further live members, one at a time,
        and the whole round is tried ``PUSH_ROUNDS`` times before the task fails
        (core/tasks/result_push.py decides whom and when)."""
        stored: list[NodeId] = []
        problems: list[str] = []
        me = self.node_id

        async def push(node_id: NodeId) -> None:
            try:
                if node_id == me:
                    if result.data is not None:
                        # A copy of another attempt's result here stays (takes_result).
                        with self.payloads.claiming_result(task_key(task_id), attempt):
                            await self.store(task_key(task_id), RESULT, result.data, wait=True)
                    elif not await result.kept_here():
                        return
                elif result.data is not None and result.size <= self.chunk:
                    await self._request(
                        node_id,
                        "put_result",
                        task_id=str(task_id),
                        attempt=attempt,
                        data=result.data,
                    )
                else:
                    async with self.transfer_link(node_id) as request:
                        await push_ranges(
                            functools.partial(
                                request, "put_result", task_id=str(task_id), attempt=attempt
                            ),
                            result.read,
                            result.size,
                            result.sha256,
                            self.chunk,
                        )
                stored.append(node_id)
            except (MeshError, OSError, trio.TooSlowError) as error:
                problems.append(f"{node_id}: {error or type(error).__name__}")
                logger.warning("could not store result of %s on %s: %s", task_id, node_id, error)

        holders = tuple(holders)
        current = self._current_holders(task_id)
        others = set(self._live(set(holders) | current)) - {me}
        own_copy = keeps_own_copy(others, holder=me in holders or me in current)
        key = task_key(task_id)
        early = task_id.origin == me and result.spill is not None
        if early:  # this node is the client's entry: it may take the ranges now
            self.early.start(key, attempt, result.size, trio.current_time(), result.read)
        try:
            await self._push_rounds(task_id, attempt, result, holders, push, stored, own_copy)
        except BaseException:
            if early:
                self.early.finish(key, attempt, False, "the push stopped", now=trio.current_time())
            raise
        if early:
            why = "this node's copy of the result was not kept"
            self.early.finish(key, attempt, me in stored, why, now=trio.current_time())
        return tuple(sorted(stored)), problems

    async def _push_rounds(
        self,
        task_id: TaskId,
        attempt: int,
        result: ResultSource,
        holders: tuple[NodeId, ...],
        push: Callable[[NodeId], Awaitable[None]],
        stored: list[NodeId],
        own_copy: bool,
    ) -> None:
        """The rounds of ``_push_result``: ``push`` adds each node that confirmed to
        ``stored``."""
        me = self.node_id
        async with trio.open_nursery() as spilling:
            if result.spill is not None:  # the worker's copy, written beside the pushes
                spilling.start_soon(result.spill.run, own_copy)
            for round_number in range(PUSH_ROUNDS):
                if round_number:
                    await trio.sleep(retry_delay(round_number))
                tried: set[NodeId] = set()
                targets = round_targets(
                    holders, self._current_holders(task_id), me, stored, own_copy
                )
                async with trio.open_nursery() as nursery:
                    for node_id in self._live(targets):
                        tried.add(node_id)
                        nursery.start_soon(push, node_id)
                if not own_copy and owes_own_copy(stored, me):
                    # The holders did not all confirm: the worker's copy after all.
                    own_copy = True
                    if result.spill is not None:
                        await result.spill.keep()
                    tried.add(me)
                    await push(me)
                for node_id in self._live(self.node.live_members()):
                    if not needs_another_holder(stored, me):
                        break
                    if node_id not in tried:
                        tried.add(node_id)
                        await push(node_id)
                others = set(self._live(self.node.live_members())) - {me}
                if kept(stored, me, others_live=bool(others)):
                    break

    def _current_holders(self, task_id: TaskId) -> set[NodeId]:
        entry = self._task_entry(task_id)
        return set() if entry is None else set(entry.holders)

    async def result_head(
        self, task_id: TaskId, holders: Iterable[NodeId], attempt: int | None = None
    ) -> tuple[Buffer | None, int]:
        """The result of ``task_id`` if it fits one range, and its size in bytes (None and
        the size for a larger one, which the client fetches in ranges: ``get_result``)."""
        data, size = await self.result_range(task_id, holders, 0, self.chunk, attempt=attempt)
        return (data if len(data) >= size else None), size

    async def obtain_result(
        self, task_id: TaskId, holders: Iterable[NodeId], attempt: int | None = None
    ) -> bytes:
        """The whole result blob of ``task_id`` in memory, range by range: a task group's
        result (its members' outputs go to the client one by one, each small)."""
        data, size = await self.result_range(task_id, holders, 0, self.chunk, attempt=attempt)
        parts = [data]
        received = len(data)
        while received < size:
            data, total = await self.result_range(
                task_id, holders, received, self.chunk, attempt=attempt
            )
            if total != size or not data:
                raise MeshError(f"result of {task_id} changed size while it was read")
            parts.append(data)
            received += len(data)
        return b"".join(parts)

    async def result_range(
        self,
        task_id: TaskId,
        holders: Iterable[NodeId],
        offset: int,
        length: int,
        *,
        attempt: int | None = None,
    ) -> tuple[Buffer, int]:
        """Bytes ``offset`` to ``offset + length`` of the result of ``task_id`` and its
        total size, from our store or any live result holder (a range a peer sent is a
        view of the frame it came in, not a copy); with ``attempt``, of that attempt's
        result only (a holder of another attempt's refuses: result_push.serves_result),
        so ranges read from several holders are one attempt's bytes."""
        payloads, key = self.payloads, task_key(task_id)
        here = serves_result(payloads.result_attempt(key), attempt)
        local = payloads.get_memory(key, RESULT) if here else None
        if local is not None:
            return local[offset : offset + length], len(local)
        if here and payloads.has(key, RESULT):

            def read() -> tuple[bytes | None, int | None]:
                return payloads.read_range(key, RESULT, offset, length), payloads.size(key, RESULT)

            data, size = await trio.to_thread.run_sync(read)
            if data is not None and size is not None:
                return data, size
        errors = []
        for node_id in self._live(holders):
            if node_id == self.node_id:
                continue
            try:
                asked = {} if attempt is None else {"attempt": attempt}
                reply = await self._request(
                    node_id,
                    "get_result",
                    task_id=str(task_id),
                    offset=offset,
                    length=length,
                    **asked,
                )
                return range_answer(reply, offset)
            except (MeshError, OSError, KeyError, TypeError, trio.TooSlowError) as error:
                errors.append(f"{node_id}: {error or type(error).__name__}")
        raise MeshError(
            f"result of {task_id} unavailable: " + ("; ".join(errors) or "no live result holder")
        )

    async def sweep_results(self, interval: float = 30.0) -> None:
        """Delete result copies this node keeps without being a holder (the worker's
        copy) once the task is delivered or forgotten; holders get DropPayload instead."""
        while True:
            await trio.sleep(interval)
            self.early.sweep(trio.current_time())
            try:
                self._sweep_once()
            except (OSError, MeshError) as error:
                logger.warning("sweeping result copies failed: %s", error)

    def _sweep_once(self) -> None:
        for parts in self.payloads.keys(RESULT):
            if len(parts) != 2 or not parts[1].isdigit():
                continue
            task_id = TaskId(parts[0], int(parts[1]))
            entry = self._task_entry(task_id)
            if entry is not None and self.node_id in entry.holders:
                continue
            if entry is None or entry.delivered:
                self.payloads.delete(task_key(task_id), RESULT)
                self._count("result_copies_swept")


class _ResultSpill:
    """The worker's own copy of a large result (transfers.Spill), written from the
    outputs' memory while the same memory is pushed to the holders: the holders' copies
    no longer wait for this one to be written and synced, nor are their ranges read
    back from it. Its sha256, computed as it is written, is the digest every push sends
    with its last range."""

    def __init__(
        self, blob: TensorBlob, payloads: PayloadStore, key: Any, task_id: TaskId, attempt: int
    ) -> None:
        self._blob = blob
        self._payloads = payloads
        self._key = key
        self._task_id = task_id
        self._attempt = attempt
        self._done = trio.Event()
        self._stored = False
        self._sha256: str | None = None

    async def run(self, write: bool = True) -> None:
        """Compute the digest, and with ``write`` keep the copy (the digest comes from
        the write then); invoked once, beside the pushes."""
        try:
            if write:
                await self.keep()
            else:
                self._sha256 = await trio.to_thread.run_sync(self._blob.digest)
        finally:
            self._done.set()

    async def keep(self) -> None:
        """Write the copy and install it (once; a failure to, or another attempt's
        result kept here, is logged, and the result is then pushed from memory only)."""
        if self._stored:
            return
        payloads, key, blob, attempt = self._payloads, self._key, self._blob, self._attempt
        scratch = payloads.scratch(key, RESULT)

        def write_and_install() -> str:  # the install syncs the directory: off the loop
            digest = blob.write_to(scratch)
            payloads.install_result(scratch, key, attempt)
            return digest

        try:
            with payloads.claiming_result(key, attempt):
                self._sha256 = await trio.to_thread.run_sync(write_and_install)
            self._stored = True
        except MeshError as error:
            logger.warning(
                "could not keep the result of %s here (%s); sending it from memory",
                self._task_id,
                error,
            )
            if self._sha256 is None:
                self._sha256 = await trio.to_thread.run_sync(blob.digest)

    async def wait(self) -> bool:
        await self._done.wait()
        if self._sha256 is None:
            raise MeshError(f"the result of {self._task_id} was neither stored nor hashed")
        return self._stored

    def sha256(self) -> str:
        assert self._sha256 is not None, "the spill has not ended"
        return self._sha256
