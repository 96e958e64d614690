"""A large upload's tensors kept in memory where it was received, for the run of its task
that usually follows there (docs/daemon.md, "Warm inputs").

A task with large inputs runs on one of its holders (the scheduler's locality rule), its
origin first, and its holders are the nodes that received the upload: the entry node (the
origin) and the nodes it relayed the ranges to (relay.py). Each of them writes its durable
copy with ``O_DIRECT`` (blobs.DirectWriter), so the copy is not in the page cache, and the
worker used to read it back from the disk into fresh arrays after the task was
acknowledged and assigned: a pass over the disk and a copy of every byte on the path from
the upload's last range to the run, while nothing else moved. Now the entry node also
copies each range, as it arrives, into the arrays of a
:class:`~meshgpu.daemon.blobs.TensorReceiver` (the same bytes its writer hashes and
writes; they are kept only once the durable copy checked out against the digest and was
installed), and the run there takes those arrays instead of reading the file. A relay
target keeps none (its ranges say ``relayed``): the task runs there only when the origin
cannot take it, and a copy no run takes cost the relay target a fifth to a third of its
CPU under the bench.

What the guarantees rest on is unchanged: the durable copy on disk, checked and synced
before the upload is answered, is what a holder's claim counts; a warm copy is a cache
of it that a run may use instead of reading the file, and its bytes are those of the
checked copy. The memory is bounded: warm copies and copies being received count
against the node's budget of tensors kept in memory, which the early results share
(memory_budget.py; an upload that would not fit gets none), each is kept at most
``keep_s`` seconds, dropped with the inputs' file, and handed to the first run of its
task here (the run owns the arrays from then on and frees them as before: one copy in
memory, as reading the file made). Rejected: keeping the received frames instead (the
run needs each tensor contiguous: a second copy at the run, on the path); the page
cache (buffered durable writes cost more than the direct ones they replaced, and the
cache keeps no promise of what it holds when the run comes).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from meshgpu.daemon.blobs import TensorReceiver
from meshgpu.daemon.memory_budget import MemoryBudget
from meshgpu.errors import MeshError

KEEP_S = 30.0
"""How long a warm copy waits for its run: an acknowledgement and an assignment take
milliseconds to a second on an idle mesh; a task that waits longer in the queue reads its
file."""


@dataclass
class _Warm:
    arrays: dict[str, np.ndarray]
    size: int
    since: float


class WarmInputs:
    """The warm copies of one node (invoked on the event loop: by the upload ops as
    ranges arrive and are installed, by the data plane when a run starts, inputs are
    dropped, or the sweep runs). Times are ``now`` arguments (trio's clock)."""

    def __init__(
        self,
        budget_bytes: int | None = None,
        keep_s: float = KEEP_S,
        *,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.budget = budget if budget is not None else MemoryBudget(budget_bytes)
        """The node's budget of tensors kept in memory, shared with the early results
        (memory_budget.py); ``budget_bytes`` makes one of its own (tests)."""
        self.keep_s = keep_s
        self._warm: OrderedDict[str, _Warm] = OrderedDict()
        self._used = 0
        """Bytes of warm copies and of receivers handed out and not yet kept or released
        (this part's share of the budget's)."""

    @property
    def used_bytes(self) -> int:
        return self._used

    def receiver(self, size: int, now: float) -> TensorReceiver | None:
        """A receiver for an upload of ``size`` bytes, its memory counted against the
        budget until :meth:`keep` or :meth:`release`; None when it does not fit (after
        the expired copies went)."""
        self.sweep(now)
        if size <= 0 or not self.budget.take(size):
            return None
        receiver = TensorReceiver()
        receiver.reserve(size)
        self._used += size
        return receiver

    def release(self, receiver: TensorReceiver) -> None:
        """A receiver from :meth:`receiver` that will not be kept (the upload failed)."""
        receiver.abort()
        self._give(receiver.announced)

    def keep(self, digest: str, receiver: TensorReceiver, now: float) -> bool:
        """Keep a whole upload's arrays as the warm copy of inputs ``digest`` (whose
        durable copy checked out); False (and released) if they are incomplete or a warm
        copy of them is kept already."""
        if digest in self._warm:
            self.release(receiver)
            return False
        try:
            arrays = receiver.tensors()
        except MeshError:
            self.release(receiver)
            return False
        self._warm[digest] = _Warm(arrays, receiver.announced, now)
        return True

    def take(self, digest: str) -> dict[str, Any] | None:
        """The warm copy of inputs ``digest`` for a run, which owns it from now on."""
        warm = self._warm.pop(digest, None)
        if warm is None:
            return None
        self._give(warm.size)
        return warm.arrays

    def drop(self, digest: str) -> None:
        """The inputs ``digest`` are gone from this node: so is their warm copy."""
        warm = self._warm.pop(digest, None)
        if warm is not None:
            self._give(warm.size)

    def _give(self, size: int) -> None:
        self._used -= size
        self.budget.give(size)

    def sweep(self, now: float) -> int:
        """Drop the warm copies older than ``keep_s``; returns how many."""
        dropped = 0
        while self._warm:
            digest, warm = next(iter(self._warm.items()))
            if now - warm.since < self.keep_s:
                break
            self.drop(digest)
            dropped += 1
        return dropped

    def __contains__(self, digest: object) -> bool:
        return digest in self._warm

    def __len__(self) -> int:
        return len(self._warm)
