"""A large result served to its client while it is being stored (docs/daemon.md, "The
client's fetch overlaps the storing").

A client submits through its entry node, the task's origin, which is one of the task's
holders: the worker pushes the result there (``put_result`` in ranges), or is that node
and keeps its own copy. The client used to ask for the result only once the task was
done, i.e. once every holder's copy was synced, and then read the whole result back from
the entry's disk: two stages, one after the other. Now the entry tells a client that
asks for it (``results`` with ``early``) when such a result starts to arrive (a
``storing`` message with its size), and answers the client's ranges (``get_result``
with ``early``) as they arrive, from the memory they came in:

* a pushed range is kept (the view of the frame it came in: no copy) from when it was
  written to the entry's scratch file until the client took it;
* a range of a result whose worker is the entry is read from the outputs' memory the
  pushes are sent from.

What is reported done, and delivered, is unchanged: the task is done once the result is
durable on its holders, and the client delivers the bytes (and tells the mesh it has
them) only once the task's ``done`` came. The last range is answered only once this
node's own copy of the same push checked out against the worker's digest and was
installed, so what a client delivers is a durable copy's bytes. A push that fails, or a
newer attempt's push, fails the early result (the waiting ranges are answered with an
error) and the client fetches the result after ``done`` as before.

The memory is bounded twice. Per result: at most ``max_result_bytes`` (``MAX_RESULT_BYTES``)
of its ranges are kept and not yet taken. A range that would go past that waits (the
push to this node is held back, as its window of ranges in flight waits for the
answers) while the client takes ranges, up to ``ROOM_WAIT_S`` per range; a result whose
client took nothing yet when it is reached, or whose client is too slow, no longer waits:
its early path fails (the ranges waiting for it are answered with an error, its memory
goes) and the push goes on, and the client reads the stored copy once its task is done.
Per node: every range kept counts against the node's budget of tensors kept in memory,
which the warm inputs share (memory_budget.py: an eighth of the memory, at most 4 GiB,
for the two together); a range that would not fit fails its result's early path. One
early result per task (a newer attempt's push drops the older one's ranges), and one
not taken within ``keep_s`` goes.
Rejected: keeping the whole result in memory on the entry until its client fetched it
after ``done`` (the client's fetch then still waited for the storing, and memory grew
with every attempt under a flapping membership); a result's ranges bounded by the
node's budget alone (a client that lagged behind the push, or none that fetched early,
left up to a whole tensor of ranges in memory); holding the push back for a client
that took nothing yet (a client that collects later, ``--no-wait``, would stall the
storing of every large result by ``ROOM_WAIT_S``).
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from meshgpu.daemon.auth.envelope import Buffer
from meshgpu.daemon.memory_budget import MemoryBudget
from meshgpu.errors import MeshError

KEEP_S = 30.0
"""How long an early result waits for its client after it last moved."""
RANGE_WAIT_S = 30.0
"""How long a client's range waits for the push to bring it before it is refused."""
MAX_RESULT_BYTES = 256 << 20
"""The most bytes of one result's ranges kept and not yet taken (a client that keeps up
is a window of ranges behind the push: ``transfers.WINDOW`` ranges of at most
``blobs.CHUNK_BYTES``)."""
ROOM_WAIT_S = 5.0
"""How long a range of a result at its ``max_result_bytes`` waits, in all, for its client
to take ranges before the result's early path fails (a sixth of the worker's timeout of
one request, ``results.TRANSFER_TIMEOUT``: the holder's copy never fails for it)."""

ReadRange = Callable[[int, int], Awaitable[Buffer]]


class EarlyResultError(MeshError):
    """The early result a client's range asked for failed or went: the client fetches
    the result once its task is done instead."""


class EarlyResult:
    """One result arriving on this node: its ranges received in order and not yet
    taken, or the memory they are read from (``source``: the worker is this node)."""

    def __init__(self, size: int, attempt: int, now: float, source: ReadRange | None) -> None:
        self.size = size
        self.attempt = attempt
        self.touched = now
        self.source = source
        self.received = size if source is not None else 0
        self.stored = False
        """This node's copy of the same push checked out and is installed."""
        self.failed: str | None = None
        self.taken = 0
        """Bytes answered to the client."""
        self._starts: list[int] = []
        self._pieces: list[Buffer] = []
        self._spans: list[list[tuple[int, int]]] = []
        """Of each kept range, the spans of it taken (merged, in order)."""
        self.kept = 0
        """Bytes of ranges kept and not yet taken."""
        self.moved = trio.Event()

    def wake(self) -> None:
        self.moved.set()
        self.moved = trio.Event()

    def keep(self, offset: int, data: Buffer) -> None:
        self._starts.append(offset)
        self._pieces.append(data)
        self._spans.append([])
        self.kept += len(data)
        self.received = offset + len(data)

    def piece(self, offset: int, length: int) -> Buffer | None:
        """The bytes from ``offset`` in the kept range that holds it (up to ``length``),
        or None when no kept range does (taken already, or never kept)."""
        at = bisect.bisect_right(self._starts, offset) - 1
        if at < 0:
            return None
        start, piece = self._starts[at], memoryview(self._pieces[at]).cast("B")
        if offset >= start + len(piece):
            return None
        return piece[offset - start : offset - start + length]

    def release(self, start: int, end: int) -> int:
        """Count bytes ``start`` to ``end`` taken; returns how many were not before, and
        drops a kept range once all of it was taken. By bytes, not by ranges: a client's
        ranges may be smaller than the pushed ones (a smaller frame limit), and a kept
        range counted only once a request covered all of it was never freed, so the
        early path failed on the result's cap or the node's budget. Nothing else goes:
        a client's ranges in flight may be asked for in any order (its window's requests
        go out as its tasks are scheduled), and dropping every range that ends before
        ``end`` dropped a range still to be taken, whose request then failed the early
        path ("taken already or never kept") and the client read the whole result back
        from the entry's disk after ``done``."""
        freed = 0
        at = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while at < len(self._starts) and self._starts[at] < end:
            first, length = self._starts[at], len(self._pieces[at])
            low, high = max(start, first) - first, min(end, first + length) - first
            if low >= high:
                at += 1
                continue
            spans = self._spans[at]
            before = sum(b - a for a, b in spans)
            spans[:] = _merged([*spans, (low, high)])
            taken = sum(b - a for a, b in spans)
            freed += taken - before
            if taken >= length:
                del self._starts[at], self._pieces[at], self._spans[at]
            else:
                at += 1
        self.kept -= freed
        return freed

    def release_all(self) -> int:
        freed = self.kept
        self._starts.clear()
        self._pieces.clear()
        self._spans.clear()
        self.kept = 0
        return freed


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` in order, those that overlap or touch made one."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


class EarlyResults:
    """The early results of one node (invoked on the event loop: by the put_result op as
    ranges arrive and are installed, by the result pushes of a worker that is the
    origin, by ``get_result`` and ``results``, and by the sweep)."""

    def __init__(
        self,
        budget_bytes: int | None = None,
        keep_s: float = KEEP_S,
        *,
        budget: MemoryBudget | None = None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        self.budget = budget if budget is not None else MemoryBudget(budget_bytes)
        """The node's budget of tensors kept in memory, shared with the warm inputs
        (memory_budget.py); ``budget_bytes`` makes one of its own (tests)."""
        self.max_result_bytes = max_result_bytes
        self.keep_s = keep_s
        self.started = trio.Event()
        """Set (and replaced) whenever an early result starts: the ``results`` streams
        look for theirs then."""
        self._results: dict[Any, EarlyResult] = {}
        self._used = 0
        """Bytes of ranges kept and not yet taken (this part's share of the budget's)."""
        self.served = 0
        """Ranges answered early."""
        self.held_back = 0
        """Ranges of pushes that waited for their client to take ranges."""

    @property
    def used_bytes(self) -> int:
        return self._used

    def size(self, key: Any) -> int | None:
        """The size of early result ``key`` while it can still be served, else None."""
        early = self._results.get(key)
        return None if early is None or early.failed is not None else early.size

    def attempt(self, key: Any) -> int | None:
        """The attempt whose push early result ``key`` is, while it can be served."""
        early = self._results.get(key)
        return None if early is None or early.failed is not None else early.attempt

    def start(
        self, key: Any, attempt: int, size: int, now: float, source: ReadRange | None = None
    ) -> None:
        """A push of ``size`` bytes of attempt ``attempt`` starts here (``source``: read
        from the outputs' memory, the worker is this node). An early result of the same
        task goes: an older attempt's or an upload started again."""
        self.drop(key, "a newer push of the result started")
        self._results[key] = EarlyResult(size, attempt, now, source)
        self.started.set()
        self.started = trio.Event()

    def add(self, key: Any, attempt: int, offset: int, data: Buffer, now: float) -> None:
        """Range ``offset`` of attempt ``attempt`` was written to this node's scratch
        copy: keep it for the client (ranges come in order, as the writer takes them)."""
        early = self._results.get(key)
        if early is None or early.attempt != attempt or early.failed is not None:
            return
        early.touched = now
        if offset != early.received:
            self._fail(early, f"a range at {offset} where {early.received} was next")
        elif early.kept + len(data) > self.max_result_bytes:
            self._fail(early, f"its client fell {early.kept} bytes behind the push")
        elif not self.budget.take(len(data)):
            self._fail(early, "no room in this node's budget of tensors kept in memory")
        else:
            early.keep(offset, data)
            self._used += len(data)
            early.wake()

    async def room(self, key: Any, attempt: int, offset: int, length: int) -> None:
        """Invoked by the put_result op before it writes range ``offset`` (``length``
        bytes) of attempt ``attempt``: wait until keeping it leaves at most
        ``max_result_bytes`` of the result's ranges untaken, while its client takes
        ranges, ``ROOM_WAIT_S`` at most (well within the push's timeout of a request);
        fail the early path instead when the client took nothing yet or did not make
        room in time. Returns at once when there is no such early result: the push is
        never held back for nothing."""
        held = False
        with trio.move_on_after(ROOM_WAIT_S):
            while True:
                early = self._results.get(key)
                if early is None or early.attempt != attempt or early.failed is not None:
                    return
                if offset + length - early.taken <= self.max_result_bytes:
                    return
                if early.taken == 0:
                    self._fail(early, "no client took its ranges while the push went on")
                    return
                if not held:
                    held = True
                    self.held_back += 1
                await early.moved.wait()
        early = self._results.get(key)
        if early is not None and early.attempt == attempt and early.failed is None:
            self._fail(early, f"its client made no room for {ROOM_WAIT_S:.0f} s")

    def finish(self, key: Any, attempt: int, stored: bool, why: str = "", *, now: float) -> None:
        """The push of attempt ``attempt`` ended: this node's copy checked out and is
        installed (``stored``), or not (``why``)."""
        early = self._results.get(key)
        if early is None or early.attempt != attempt or early.failed is not None:
            return
        early.touched = now
        if stored:
            early.stored = True
            early.wake()
        else:
            self._fail(early, why or "the push of the result failed")

    async def take(
        self, key: Any, offset: int, length: int, attempt: int | None = None
    ) -> tuple[Buffer, int] | None:
        """Up to ``length`` bytes of early result ``key`` from ``offset`` and its size,
        once they arrived (the range that reaches the end once this node's copy is
        installed); None when there is no early result ``key`` (the caller reads the
        stored copy). Raises EarlyResultError when it failed, went, did not move for
        ``RANGE_WAIT_S``, or is the push of another attempt than ``attempt`` (the one
        the client is fetching: a range of another attempt's bytes would be assembled
        with its own)."""
        early = self._results.get(key)
        if early is None:
            return None
        if attempt is not None and early.attempt != attempt:
            raise EarlyResultError(
                f"the early result is attempt {early.attempt}'s, not attempt {attempt}'s"
            )
        while True:
            if early.failed is not None:
                raise EarlyResultError(f"the early result failed: {early.failed}")
            if offset >= early.size:
                return b"", early.size
            early.touched = trio.current_time()
            if offset < early.received:
                data = await self._read(early, offset, length)
                if data is None:
                    raise EarlyResultError(f"bytes {offset}.. were taken already or never kept")
                end = offset + len(data)
                if end < early.size or early.stored:
                    self._taken(key, early, offset, end)
                    self.served += 1
                    return data, early.size
            moved = early.moved
            with trio.move_on_after(RANGE_WAIT_S) as waited:
                await moved.wait()
            if waited.cancelled_caught:
                raise EarlyResultError(f"the result's push did not move for {RANGE_WAIT_S:.0f} s")

    async def _read(self, early: EarlyResult, offset: int, length: int) -> Buffer | None:
        if early.source is not None:
            return await early.source(offset, min(length, early.size - offset))
        return early.piece(offset, length)

    def _taken(self, key: Any, early: EarlyResult, start: int, end: int) -> None:
        early.taken = max(early.taken, end)
        self._give(early.release(start, end))
        early.wake()  # a push held back for room may go on
        # Done once the end was taken and no range is left (one asked out of order may
        # still come for its kept range).
        if early.taken >= early.size and not early.kept and self._results.get(key) is early:
            del self._results[key]

    def _fail(self, early: EarlyResult, why: str) -> None:
        early.failed = why
        self._give(early.release_all())
        early.wake()

    def _give(self, size: int) -> None:
        self._used -= size
        self.budget.give(size)

    def drop(self, key: Any, why: str) -> None:
        """Early result ``key`` goes (its ranges' memory with it)."""
        early = self._results.pop(key, None)
        if early is not None:
            self._fail(early, why)

    def sweep(self, now: float) -> int:
        """Drop the early results that did not move for ``keep_s``; returns how many."""
        stale = [key for key, early in self._results.items() if now - early.touched > self.keep_s]
        for key in stale:
            self.drop(key, f"no client took it within {self.keep_s:.0f} s")
        return len(stale)

    def __contains__(self, key: object) -> bool:
        return key in self._results

    def __len__(self) -> int:
        return len(self._results)
