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

import contextlib
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
from meshgpu.errors import MeshError, OtherAttemptKept, RequestFailedError

if TYPE_CHECKING:
    from meshgpu.daemon.early_results import EarlyResults
    from meshgpu.daemon.payloads import PayloadStore
    from meshgpu.daemon.rpc import ConnectionPool
    from meshgpu.daemon.status import TaskLookup

logger = logging.getLogger("meshgpu.daemon")

RESULT = "result"
READ_RESTARTS = 3
"""How often a reader of a result in ranges starts again when a range names another
attempt than the ones before it (a newer attempt installed mid-read, holders that keep
different attempts); then the read fails, and the client collects later."""
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
    _write_payload: Callable[[Any, str, bytes, int | None], int | None]
    _durable: Callable[[int], Awaitable[None]]

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

    async def store_result(self, key: Any, data: bytes, attempt: int | None) -> None:
        """Keep attempt ``attempt``'s result of one range here, durably, with its attempt:
        in the journal when small, else in a file with its record (PayloadStore). Raises
        OtherAttemptKept when a newer attempt's result is kept here (takes_result), once
        that one's install is durable (PayloadStore.sync_result: the refused attempt
        adopts it)."""
        payloads = self.payloads
        try:
            with payloads.claiming_result(key, attempt):
                seq = self._write_payload(key, RESULT, data, attempt)
                if seq is not None:
                    await self._durable(seq)
                    return
                await trio.to_thread.run_sync(payloads.store_small_result, key, data, attempt)
                if payloads.get_memory(key, RESULT) is not None:  # a smaller attempt's
                    payloads.drop_inline_result(key)
        except OtherAttemptKept:
            await trio.to_thread.run_sync(payloads.sync_result, key)
            raise

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
    ) -> tuple[tuple[NodeId, ...], list[str], int]:
        """Store the result on every live holder; returns the nodes that keep the
        task's result, why the others did not, and which attempt's result those keep.
        Storing is part of finishing the task: while no node other than this one
        confirmed, the result goes to further live members, one at a time, and the whole
        round is tried ``PUSH_ROUNDS`` times before the task fails
        (core/tasks/result_push.py decides whom and when). A node that refuses because
        it keeps a newer attempt's result (``kept_attempt`` of its answer) has the task's
        result too: the attempt adopts the newest such one, and returns the nodes that
        keep it and that attempt (its ``done`` then names an attempt its holders keep;
        the nodes that took this attempt's copy keep an older one, which no reader of the
        newer one is served)."""
        stored: list[NodeId] = []
        problems: list[str] = []
        newer: dict[NodeId, int] = {}
        """Nodes that keep a newer attempt's result, and which (counted as ``stored``)."""
        me = self.node_id

        def refused(node_id: NodeId, error: Exception) -> bool:
            kept = (
                error.kept_attempt
                if isinstance(error, OtherAttemptKept)
                else error.fields.get("kept_attempt")
                if isinstance(error, RequestFailedError)
                else None
            )
            if not isinstance(kept, int) or kept <= attempt:
                return False
            newer[node_id] = kept
            stored.append(node_id)
            return True

        async def push(node_id: NodeId) -> None:
            try:
                if node_id == me:
                    if result.data is not None:
                        # A copy of another attempt's result here stays (takes_result).
                        await self.store_result(task_key(task_id), result.data, attempt)
                    elif not await result.kept_here():
                        kept = result.spill.kept_attempt if result.spill is not None else None
                        if kept is not None and kept > attempt:
                            newer[me] = kept
                            stored.append(me)
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
                if isinstance(error, MeshError) and refused(node_id, error):
                    logger.info("%s keeps a newer attempt's result of %s", node_id, task_id)
                    return
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
            mine = me in stored and me not in newer
            self.early.finish(key, attempt, mine, why, now=trio.current_time())
        if not newer:
            return tuple(sorted(stored)), problems, attempt
        adopted = max(newer.values())
        self._count("result_attempts_adopted")
        keepers = tuple(sorted(node for node, kept in newer.items() if kept == adopted))
        return keepers, problems, adopted

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
        the size for a larger one, which the client fetches in ranges: ``get_result``).
        A larger one kept here is not read (its size is its file's): its first range,
        read to learn the size and dropped, was 16-25 MiB read back from the disk (its
        copy is written directly, so not in the page cache) before every large result's
        ``done`` went to its client."""
        payloads, key = self.payloads, task_key(task_id)
        if serves_result(payloads.result_attempt(key), attempt):
            size = await trio.to_thread.run_sync(payloads.size, key, RESULT)
            if size is not None and size > self.chunk:
                return None, size
        data, size, _ = await self.result_range(task_id, holders, 0, self.chunk, attempt=attempt)
        return (data if len(data) >= size else None), size

    async def obtain_result(
        self, task_id: TaskId, holders: Iterable[NodeId], attempt: int | None = None
    ) -> bytes:
        """The whole result blob of ``task_id`` in memory, range by range: a task group's
        result (its members' outputs go to the client one by one, each small), the HTTP
        surface's. Every range is one attempt's: the first range names the attempt the
        others are asked for, and a range of another attempt starts the read again
        (``READ_RESTARTS`` times)."""
        holders = tuple(holders)
        for _ in range(READ_RESTARTS + 1):
            data, size, pinned = await self.result_range(
                task_id, holders, 0, self.chunk, attempt=attempt
            )
            parts = [data]
            received = len(data)
            while received < size:
                data, total, named = await self.result_range(
                    task_id,
                    holders,
                    received,
                    self.chunk,
                    attempt=attempt if pinned is None else pinned,
                )
                if named != pinned:
                    break
                if total != size or not data:
                    raise MeshError(f"result of {task_id} changed size while it was read")
                parts.append(data)
                received += len(data)
            else:
                return b"".join(parts)
            attempt = named  # a newer attempt was installed, or holders keep others
        raise MeshError(
            f"result of {task_id} unavailable: its holders' attempts kept changing while "
            "it was read"
        )

    async def result_range(
        self,
        task_id: TaskId,
        holders: Iterable[NodeId],
        offset: int,
        length: int,
        *,
        attempt: int | None = None,
    ) -> tuple[Buffer, int, int | None]:
        """Bytes ``offset`` to ``offset + length`` of the result of ``task_id``, its total
        size and the attempt whose bytes they are (None: unknown), from our store or any
        live result holder (a range a peer sent is a view of the frame it came in, not a
        copy). With ``attempt``: that attempt's result or a newer one's
        (result_push.serves_result); only when no live holder keeps one, the newest older
        attempt's any holder keeps (a whole result of the task too: nothing accepted is
        lost when the holders of the attempt ``done`` names died, docs/daemon.md). A
        reader of several ranges pins the attempt the first one names
        (``obtain_result``, the client's fetch)."""
        payloads, key = self.payloads, task_key(task_id)
        installed = payloads.result_attempt(key)
        if serves_result(installed, attempt):
            local = await self._local_range(key, offset, length)
            if local is not None:
                return local
        errors: list[str] = []
        older: dict[NodeId, int] = {}
        """Live holders that keep an older attempt's result than the one asked for."""
        for node_id in self._live(holders):
            if node_id == self.node_id:
                continue
            try:
                return await self._remote_range(task_id, node_id, offset, length, attempt)
            except (MeshError, OSError, KeyError, TypeError, trio.TooSlowError) as error:
                errors.append(f"{node_id}: {error or type(error).__name__}")
                if isinstance(error, RequestFailedError):  # keeps an older attempt's?
                    kept = error.fields.get("kept_attempt")
                    if isinstance(kept, int):
                        older[node_id] = kept
        if attempt is not None:
            if installed is not None and installed < attempt:
                older[self.node_id] = installed
            for node_id in sorted(older, key=lambda node: -older[node]):
                kept = older[node_id]
                try:
                    if node_id == self.node_id:
                        local = await self._local_range(key, offset, length)
                        if local is not None and local[2] == kept:
                            return local
                        continue
                    return await self._remote_range(task_id, node_id, offset, length, kept)
                except (MeshError, OSError, KeyError, TypeError, trio.TooSlowError) as error:
                    errors.append(f"{node_id}: {error or type(error).__name__}")
        raise MeshError(
            f"result of {task_id} unavailable: " + ("; ".join(errors) or "no live result holder")
        )

    async def _local_range(
        self, key: Any, offset: int, length: int
    ) -> tuple[Buffer, int, int | None] | None:
        """A range of the result kept here, its size and attempt; None if none is here."""
        payloads = self.payloads
        if payloads.get_memory(key, RESULT) is not None:  # in the journal: no thread hop
            return payloads.read_result_range(key, offset, length)
        if not payloads.has(key, RESULT):
            return None
        return await trio.to_thread.run_sync(payloads.read_result_range, key, offset, length)

    async def _remote_range(
        self, task_id: TaskId, node_id: NodeId, offset: int, length: int, attempt: int | None
    ) -> tuple[Buffer, int, int | None]:
        """A range of the result a holder keeps, its size and attempt (the holder names
        it; None from one that does not know it)."""
        asked = {} if attempt is None else {"attempt": attempt}
        reply = await self._request(
            node_id, "get_result", task_id=str(task_id), offset=offset, length=length, **asked
        )
        data, size = range_answer(reply, offset)
        named = reply.get("attempt")
        return data, size, named if isinstance(named, int) else None

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
        self._kept_attempt: int | None = None

    @property
    def kept_attempt(self) -> int | None:
        """The newer attempt whose result this node keeps, when the copy was refused."""
        return self._kept_attempt

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
            if isinstance(error, OtherAttemptKept):  # adopted once its install is durable
                with contextlib.suppress(MeshError):
                    await trio.to_thread.run_sync(payloads.sync_result, key)
                    self._kept_attempt = error.kept_attempt
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
