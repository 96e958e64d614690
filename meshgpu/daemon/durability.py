"""What the daemon writes to its journal, when it is durable, and what waits for that.

The journal's group commit (one fsync for every record written since the last one, in a
worker thread) and the gate on the effects that must not leave before their record is on
stable storage. On this disk every fsync costs about 4 ms whatever it syncs (fsync,
fdatasync, a preallocated file: measured alike, docs/daemon.md), so what matters is how
many of them stand *in sequence* on a task's path, not their kind.

The gate. A node's claim to *hold* a task (its peers count it towards the
acknowledgement) and the acknowledgement itself must follow the journal record that
makes the node a holder: the first record of that task on this node. So every datagram
and every ``TaskAccepted`` queued after such a record waits until it is synced, in order
(``holder_seq``); every other effect (local work, transfers, results to clients, later
records) goes on at once. Datagrams of a ``SubmitTask`` are free: the hold requests to
the other holders and the first announcement claim nothing the origin has not durably
done, so the second holder's fetch and fsync run while the origin's own fsync is under
way; unless the submission was acknowledged in that same handle (a lone holder,
``replicas=1``): then they carry the ``acknowledged`` mark and wait (node_driver.py).
Rejected: gating every effect behind every record (the previous executor: four
fsyncs in sequence before a replicas=2 acknowledgement, and gossip probes waiting behind
them), and classifying datagrams by decoding them (a decode per datagram sent).

Tombstones. The core persists ``TaskRecord(task_id, None)`` when it collects a task;
kept per task they grew the journal forever. Here they are folded into one record of
collected runs (``[origin, low, high]``, the core's :class:`CollectedSet` form: a handful
of integers per origin, since sequences are handed out in order) and the tasks' own keys
are deleted, so compaction drops them. A tombstone is first written under its task's key
like any record and folded with the others every ``fold_every`` collections (and at
start): folding at each collection rewrote the whole runs record every time, which is
quadratic when this node holds scattered tasks of other origins (replicas on a few of
many nodes: one run per task; measured 175 MB written for 5,000 collections). At start
the runs are expanded back into tombstone records for ``JournalReplayed`` (the core's
replay event takes records).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from meshgpu.core.effects import SendDatagram, TaskAccepted
from meshgpu.core.tasks import TaskId, TaskRecord, record_from_bytes, record_to_bytes
from meshgpu.core.tasks.collected import CollectedSet
from meshgpu.daemon.journal import Journal
from meshgpu.daemon.payloads import is_inline_key
from meshgpu.errors import StorageError

logger = logging.getLogger("meshgpu.daemon")

COLLECTED_KEY = ("~collected",)
"""Journal key of the runs of collected task ids (the folded tombstones)."""

FOLD_EVERY = 512
"""Per-task tombstones written before they are folded into the runs record."""


class GroupCommit:
    """The journal of one daemon, its committer task and its gate."""

    def __init__(
        self,
        journal: Journal,
        count: Callable[[str], None],
        on_failure: Callable[[StorageError], None],
        fold_every: int = FOLD_EVERY,
    ) -> None:
        self.journal = journal
        self.fold_every = fold_every
        self._loose: list[Any] = []
        """Keys of tombstones written per task since the last fold."""
        self._count = count
        self._on_failure = on_failure
        self.on_sync: Callable[[float], None] | None = None
        """Told each fsync's seconds (the metrics' latency histogram)."""
        self.holder_seq = 0
        """Number of the latest record that made this node a holder of a task."""
        self.collected = CollectedSet()
        self._wanted = trio.Event()
        self._synced = trio.Event()

    # --- start ----------------------------------------------------------------------

    def replay(self) -> list[TaskRecord]:
        """The task records to hand the core at start: tombstones (folded runs, and any
        per-task ones an older journal holds, folded now) first, then live entries."""
        entries: list[TaskRecord] = []
        loose: list[Any] = []
        for key, value in self.journal.items():
            if key == COLLECTED_KEY:
                for origin, low, high in value:
                    self.collected.add_run(str(origin), int(low), int(high))
            elif not is_inline_key(key):
                record = record_from_bytes(value)
                if record.entry is None:
                    self.collected.add(record.task_id)
                    loose.append(key)
                else:
                    entries.append(record)
        if loose:
            self.journal.write([(COLLECTED_KEY, self._runs())], deletes=loose)
            self.journal.sync()
        tombstones = [
            TaskRecord(TaskId(origin, sequence), None)
            for origin, low, high in self.collected.runs()
            for sequence in range(low, high + 1)
        ]
        return tombstones + entries

    # --- writing ----------------------------------------------------------------------

    def persist(self, record: TaskRecord) -> None:
        """Append one record of the core's ``Persist`` (no fsync here)."""
        task_id = record.task_id
        key = (task_id.origin, task_id.sequence)
        if record.entry is None:
            self.collected.add(task_id)
            self.journal.write([(key, record_to_bytes(record))])
            self._loose.append(key)
            if len(self._loose) >= self.fold_every:
                self.fold()
        else:
            first = self.journal.get(key) is None
            seq = self.journal.write([(key, record_to_bytes(record))])
            if first:
                self.holder_seq = seq
        self._count("journal_appends")
        self._wanted.set()

    def fold(self) -> None:
        """Replace the per-task tombstones written since the last fold by the runs record
        (a torn tail may keep tombstones the runs already cover: the next start folds
        them again)."""
        if self._loose:
            self.journal.write([(COLLECTED_KEY, self._runs())], deletes=self._loose)
            self._loose = []

    def wrote(self, seq: int | None) -> None:
        """Something else (a payload) was appended: sync it soon."""
        if seq is not None:
            self._wanted.set()

    def _runs(self) -> list[list[Any]]:
        return [[origin, low, high] for origin, low, high in self.collected.runs()]

    # --- syncing ------------------------------------------------------------------------

    async def durable(self, seq: int) -> None:
        """Wait until record ``seq`` (and everything written before it) is synced."""
        while self.journal.synced_seq < seq:
            self._wanted.set()
            await self._synced.wait()

    def gates(self, effect: Any, free: bool, queue_busy: bool) -> bool:
        """Whether ``effect`` must wait for the holder record before it (module doc)."""
        if isinstance(effect, TaskAccepted):
            pass  # never free: a lone holder (replicas=1) acknowledges in the same handle
        elif free or not isinstance(effect, SendDatagram):
            return False
        return queue_busy or self.holder_seq > self.journal.synced_seq

    async def run(self) -> None:
        """The committer: one fsync covers every record written since the last one; the
        effects and payload writes waiting on those records are released together."""
        journal = self.journal
        while True:
            if journal.synced_seq >= journal.written_seq:
                self._wanted = trio.Event()
                if journal.synced_seq >= journal.written_seq:
                    await self._wanted.wait()
                continue
            try:
                started = trio.current_time()
                await trio.to_thread.run_sync(journal.sync)
                if self.on_sync is not None:
                    self.on_sync(trio.current_time() - started)
                self._count("journal_syncs")
                if journal.needs_compaction():
                    await trio.to_thread.run_sync(journal.compact)
                    self._count("journal_compactions")
            except StorageError as error:
                self._on_failure(error)
                return
            synced, self._synced = self._synced, trio.Event()
            synced.set()
