"""Sending the task table: batched updates and the checksum anti-entropy exchange.

Every local change is sent to every live member at the end of the handler that made it
(:meth:`TableSync.broadcast`). Every ``sync_interval_s`` a node sends one random live
peer ``(origin, sequence, crc32)`` for the next slice of its table and its tombstone
intervals (``TaskDigest``); the peer answers with its entries whose checksum differs
(``TaskUpdate(reply=True)``, and the first node answers that with whatever it knew more
about) and asks for the ids it lacks (``TaskWant``). Entries only grow, so equal checksums
mean equal entries and any difference is settled by one merge each way.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import msgpack

from meshgpu.core.tasks.messages import TaskDigest, TaskUpdate, TaskWant
from meshgpu.core.tasks.spec import TaskId
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.tasks.wire import entry_to_wire
from meshgpu.core.types import Address, NodeId

if TYPE_CHECKING:
    from meshgpu.core.tasks.component import TaskComponent

BODY_BUDGET_MARGIN = 160
"""Bytes of a datagram left for the envelope header and piggybacked membership updates."""

MAX_RUNS_PER_SYNC = 16
"""Tombstone intervals carried by one anti-entropy message (rotating)."""

DIGEST_ITEM_BYTES = 20
"""Room a digest item takes besides its origin's characters (sequence, crc, headers)."""


class TableSync:
    """The sending side of one node's task table."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.checksums: dict[TaskId, int] = {}
        self._cursor = 0
        self._runs_cursor = 0

    def note_change(self, entry: TaskEntry) -> None:
        """Keep the entry's checksum current (called on every change)."""
        self.checksums[entry.task_id] = checksum(entry)

    def forget(self, task_id: TaskId) -> None:
        self.checksums.pop(task_id, None)

    def broadcast(self, entries: list[TaskEntry]) -> None:
        """Send ``entries`` to every live member but this node."""
        members = self.tasks.mesh.members()
        for node_id in self.tasks.mesh.live_members():
            if node_id != self.tasks.node_id and node_id in members:
                self.send_entries(members[node_id].address, entries, [], reply=False)

    def on_update(self, message: TaskUpdate, source: Address, now: float) -> None:
        if message.collected:
            for dropped in self.tasks.table.merge_collected(list(message.collected)):
                self.tasks.forget_entry(dropped, persist=True)
        newer: list[TaskEntry] = []
        for entry in message.entries:
            self.tasks.merge_remote(entry, now, local=False)
            mine = self.tasks.table.get(entry.task_id)
            if message.reply and mine is not None and mine != entry:
                newer.append(mine)
        if message.reply:
            runs = list(self.tasks.table.collected.runs())[:MAX_RUNS_PER_SYNC]
            if newer or runs:
                self.send_entries(source, newer, runs, reply=False)

    def send_round(self) -> None:
        """Anti-entropy: checksums of the next slice of the table to one random peer."""
        peers = [n for n in self.tasks.mesh.live_members() if n != self.tasks.node_id]
        if not peers:
            return
        peer = self.tasks.rng.choice(peers)
        address = self.tasks.mesh.members()[peer].address
        runs = list(self.tasks.table.collected.runs())
        if len(runs) > MAX_RUNS_PER_SYNC:
            start = self._runs_cursor % len(runs)
            runs = (runs[start:] + runs[:start])[:MAX_RUNS_PER_SYNC]
            self._runs_cursor = start + MAX_RUNS_PER_SYNC
        budget = self.body_budget() - sum(len(origin) + 24 for origin, _, _ in runs)
        ids = self.tasks.table.ids()
        items: list[tuple[NodeId, int, int]] = []
        if ids:
            start = self._cursor % len(ids)
            for tid in ids[start:] + ids[:start]:
                budget -= len(tid.origin) + DIGEST_ITEM_BYTES
                if budget < 0 and items:
                    break
                crc = self.checksums.get(tid)
                if crc is None:
                    entry = self.tasks.table.get(tid)
                    assert entry is not None
                    crc = self.checksums[tid] = checksum(entry)
                items.append((tid.origin, tid.sequence, crc))
            self._cursor = start + len(items)
        self.tasks.context.count("task_syncs_sent")
        self.tasks.context.send(address, TaskDigest(tuple(items), tuple(runs)))

    def on_digest(self, message: TaskDigest, source: Address, now: float) -> None:
        if message.collected:
            for dropped in self.tasks.table.merge_collected(list(message.collected)):
                self.tasks.forget_entry(dropped, persist=True)
        differing: list[TaskEntry] = []
        wanted: list[tuple[NodeId, int]] = []
        for origin, sequence, crc in message.items:
            tid = TaskId(origin, sequence)
            mine = self.tasks.table.get(tid)
            if mine is None:
                if tid not in self.tasks.table.collected:
                    wanted.append((origin, sequence))
            elif self.checksums.get(tid) != crc:
                differing.append(mine)
        runs = list(self.tasks.table.collected.runs())[:MAX_RUNS_PER_SYNC]
        if differing or runs:
            self.send_entries(source, differing, runs, reply=True)
        if wanted:
            self.tasks.context.send(source, TaskWant(tuple(wanted)))

    def on_want(self, message: TaskWant, source: Address) -> None:
        entries = [
            entry
            for origin, sequence in message.ids
            if (entry := self.tasks.table.get(TaskId(origin, sequence))) is not None
        ]
        if entries:
            self.send_entries(source, entries, [], reply=False)

    def body_budget(self) -> int:
        return self.tasks.context.config.max_datagram_bytes - BODY_BUDGET_MARGIN

    def send_entries(
        self,
        address: Address,
        entries: list[TaskEntry],
        runs: list[tuple[NodeId, int, int]],
        reply: bool,
    ) -> None:
        """Send ``entries`` in as few datagrams as fit under the size limit."""
        budget = self.body_budget() - 20 * len(runs)
        batch: list[TaskEntry] = []
        used = 0
        for entry in entries:
            size = entry_size(entry)
            if batch and used + size > budget:
                self.tasks.context.send(address, TaskUpdate(tuple(batch), tuple(runs), reply))
                runs = []
                batch, used = [], 0
            batch.append(entry)
            used += size
        if batch or runs:
            self.tasks.context.send(address, TaskUpdate(tuple(batch), tuple(runs), reply))


def checksum(entry: TaskEntry) -> int:
    """CRC-32 of the entry's wire form: equal entries, equal checksums, on every node."""
    packed: bytes = msgpack.packb(entry_to_wire(entry), use_bin_type=True)
    return zlib.crc32(packed)


def entry_size(entry: TaskEntry) -> int:
    packed: bytes = msgpack.packb(entry_to_wire(entry), use_bin_type=True)
    return len(packed) + 2
