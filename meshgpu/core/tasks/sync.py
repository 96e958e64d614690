"""Sending the task table: targeted updates, leader hand-over and checksum anti-entropy.

* Changes: every local change is sent, at the end of the handler that made it, to the
  nodes involved in the task (:mod:`~meshgpu.core.tasks.interest`), one datagram per
  destination with every entry it needs (:meth:`TableSync.send_changes`).
* Hand-over: when a node learns of a new leader it pushes it every open entry it holds or
  runs (acknowledged, not yet collectable; :meth:`TableSync.hand_over`). The new leader
  itself asks the holders of every open entry it has but is not involved in for their
  copy (``TaskWant``; its own copy may be stale, from an earlier term) and acts on such an
  entry only once a copy came back (:meth:`TableSync.confirm_as_leader`, asked again every
  sync round).
* Anti-entropy: every ``sync_interval_s`` a node sends one random live peer
  ``(origin, sequence, crc32)`` for the next slice of the entries that peer is involved in,
  and its tombstone intervals (``TaskDigest``); the peer answers with its entries whose
  checksum differs (``TaskUpdate(reply=True)``, and the first node answers that with
  whatever it knew more about) and asks for the ids it lacks (``TaskWant``). Entries only
  grow, so equal checksums mean equal entries and any difference is settled by one merge
  each way.
* Watched tasks: a node a client asked for an outcome it has no current copy of asks the
  holders (or, knowing none, every live member) every sync round until it resolves.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import msgpack

from meshgpu.core.membership import LIVE_STATES
from meshgpu.core.tasks.interest import audience, involves, keeps_current
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

WANT_ITEM_BYTES = 14
"""Room a wanted id takes besides its origin's characters (sequence, headers)."""


class TableSync:
    """The sending side of one node's task table."""

    def __init__(self, tasks: TaskComponent) -> None:
        self.tasks = tasks
        self.checksums: dict[TaskId, int] = {}
        self._cursor = 0
        self._runs_cursor = 0
        self._leader_cursor = 0

    def note_change(self, entry: TaskEntry) -> None:
        """Drop the entry's cached checksum (called on every change)."""
        # Computed lazily, when a digest needs it: most entries change several times
        # between two anti-entropy rounds that involve them, and many never meet one.
        self.checksums.pop(entry.task_id, None)

    def checksum_of(self, entry: TaskEntry) -> int:
        """The entry's checksum, from the cache when it did not change since."""
        crc = self.checksums.get(entry.task_id)
        if crc is None:
            crc = self.checksums[entry.task_id] = checksum(entry)
        return crc

    def forget(self, task_id: TaskId) -> None:
        self.checksums.pop(task_id, None)

    def send_changes(
        self,
        entries: list[TaskEntry],
        notify: dict[TaskId, set[NodeId]],
        marks: dict[TaskId, str | None],
    ) -> None:
        """Send each changed entry to the nodes involved in it (fewer when only a mark
        changed, see ``marks``; more in ``notify``, e.g. a worker the task moved away
        from): one batch per destination."""
        tasks = self.tasks
        me = tasks.node_id
        leader = tasks.mesh.leader()
        by_node: dict[NodeId, list[TaskEntry]] = {}
        for entry in entries:
            nodes = audience(entry, leader, marks.get(entry.task_id))
            extra = notify.get(entry.task_id)
            if extra:
                nodes |= extra
            nodes.discard(me)
            for node_id in nodes:
                by_node.setdefault(node_id, []).append(entry)
        if not by_node:
            return
        members = tasks.mesh.members()
        for node_id in sorted(by_node):
            info = members.get(node_id)
            if info is not None and info.state in LIVE_STATES:
                self.send_entries(info.address, by_node[node_id], [], reply=False)

    def hand_over(self, leader: NodeId) -> None:
        """Push ``leader`` every open entry this node holds or runs: it owns the queue now
        and may never have seen them (only an acknowledged entry's leader hears of it)."""
        tasks = self.tasks
        info = tasks.mesh.members().get(leader)
        if info is None:
            return
        me = tasks.node_id
        entries = [
            entry
            for entry in tasks.table
            if entry.acknowledged
            and not entry.collectable
            and (me in entry.holders or entry.state.worker == me)
        ]
        tasks.context.count("task_handovers_sent")
        self.send_entries(info.address, entries, [], reply=False, handover=True)

    def confirm_as_leader(self) -> None:
        """This node just became leader: every open entry it is not involved in may be a
        stale copy from an earlier term (its later changes went to that term's leader), so
        it is confirmed with its holders before the leader acts on it."""
        tasks = self.tasks
        me = tasks.node_id
        unconfirmed: set[TaskId] = set()
        for entry in tasks.table:
            if entry.acknowledged and not entry.collectable and not keeps_current(entry, me):
                unconfirmed.add(entry.task_id)
        tasks.unconfirmed = unconfirmed
        if unconfirmed:
            tasks.context.count("task_confirmations_asked", len(unconfirmed))
            self.ask_holders(sorted(unconfirmed))

    def ask_holders(self, ids: list[TaskId]) -> None:
        """``TaskWant`` for each id to its live holders (batched per holder)."""
        tasks = self.tasks
        me = tasks.node_id
        members = tasks.mesh.members()
        asks: dict[NodeId, list[TaskId]] = {}
        for tid in ids:
            entry = tasks.table.get(tid)
            if entry is None:
                continue
            for holder in entry.holders:
                info = members.get(holder)
                if holder != me and info is not None and info.state in LIVE_STATES:
                    asks.setdefault(holder, []).append(tid)
        for holder in sorted(asks):
            self.send_wants(members[holder].address, asks[holder])

    def ask_for_watched(self, ids: list[TaskId]) -> None:
        """A client waits here for these outcomes: ask the holders of each (every live
        member when this node has no copy) for their current entry."""
        tasks = self.tasks
        known = [tid for tid in ids if tid in tasks.table]
        unknown = [tid for tid in ids if tid not in tasks.table]
        if known:
            self.ask_holders(known)
        if unknown:
            members = tasks.mesh.members()
            for node_id in tasks.mesh.live_members():
                if node_id != tasks.node_id and node_id in members:
                    self.send_wants(members[node_id].address, unknown)

    def send_wants(self, address: Address, ids: list[TaskId]) -> None:
        """``TaskWant`` for ``ids`` in as few datagrams as fit under the size limit."""
        budget = self.body_budget()
        batch: list[tuple[NodeId, int]] = []
        used = 0
        for tid in ids:
            size = len(tid.origin) + WANT_ITEM_BYTES
            if batch and used + size > budget:
                self.tasks.send(address, TaskWant(tuple(batch)))
                batch, used = [], 0
            batch.append((tid.origin, tid.sequence))
            used += size
        if batch:
            self.tasks.send(address, TaskWant(tuple(batch)))

    def on_update(
        self, message: TaskUpdate, source: Address, now: float, sender: NodeId | None = None
    ) -> None:
        if message.handover and sender is not None:
            self.tasks.handed_over.add(sender)
        if message.collected:
            for dropped in self.tasks.table.merge_collected(list(message.collected)):
                self.tasks.forget_entry(dropped, persist=True)
        newer: list[TaskEntry] = []
        for entry in message.entries:
            self.tasks.merge_remote(entry, now, local=False)
            self.tasks.confirm(entry.task_id, now)
            mine = self.tasks.table.get(entry.task_id)
            if message.reply and mine is not None and mine != entry:
                newer.append(mine)
        if message.reply:
            runs = list(self.tasks.table.collected.runs())[:MAX_RUNS_PER_SYNC]
            if newer or runs:
                self.send_entries(source, newer, runs, reply=False)

    def send_round(self) -> None:
        """Anti-entropy: checksums of the next slice of the entries one random peer is
        involved in; and, as a new leader, ask again for the copies not confirmed yet."""
        tasks = self.tasks
        if tasks.unconfirmed and tasks.mesh.leader() == tasks.node_id:
            self.ask_holders(sorted(tasks.unconfirmed))
        peers = [n for n in self.tasks.mesh.live_members() if n != self.tasks.node_id]
        if not peers:
            return
        peer = self.tasks.rng.choice(peers)
        leader = tasks.mesh.leader()
        address = self.tasks.mesh.members()[peer].address
        runs = list(self.tasks.table.collected.runs())
        if len(runs) > MAX_RUNS_PER_SYNC:
            start = self._runs_cursor % len(runs)
            runs = (runs[start:] + runs[:start])[:MAX_RUNS_PER_SYNC]
            self._runs_cursor = start + MAX_RUNS_PER_SYNC
        budget = self.body_budget() - sum(len(origin) + 24 for origin, _, _ in runs)
        table = self.tasks.table
        ids = table.ids()
        items: list[tuple[NodeId, int, int]] = []
        if ids:
            start = self._cursor % len(ids)
            scanned = 0
            for tid in ids[start:] + ids[:start]:
                entry = table.get(tid)
                assert entry is not None
                if not involves(entry, peer, leader):
                    scanned += 1
                    continue
                budget -= len(tid.origin) + DIGEST_ITEM_BYTES
                if budget < 0 and items:
                    break
                scanned += 1
                crc = self.checksum_of(entry)
                items.append((tid.origin, tid.sequence, crc))
            self._cursor = start + scanned
        self.tasks.context.count("task_syncs_sent")
        self.tasks.send(address, TaskDigest(tuple(items), tuple(runs)))
        if leader is not None and leader != tasks.node_id and leader != peer:
            self.send_leader_digest(leader)

    def send_leader_digest(self, leader: NodeId) -> None:
        """Anti-entropy towards the queue's owner: checksums of the open, acknowledged
        entries this node holds, every round. A change reaches the leader in one datagram
        (the acknowledged mark goes to it alone); if that datagram is lost, or a short
        partition drops it without a leader change (so no hand-over follows), the random
        peer rounds above would reach the leader only after about n rounds, and the task
        would wait unassigned that long. Here the leader answers the ids it lacks with a
        ``TaskWant`` and differing copies with its own, within one round. Nothing is sent
        while this node holds no open work."""
        tasks = self.tasks
        me = tasks.node_id
        open_ids = [
            tid
            for tid in tasks.table.ids()
            if (entry := tasks.table.get(tid)) is not None
            and entry.acknowledged
            and not entry.state.terminal
            and me in entry.holders
        ]
        if not open_ids:
            return
        info = tasks.mesh.members().get(leader)
        if info is None or info.state not in LIVE_STATES:
            return
        start = self._leader_cursor % len(open_ids)
        budget = self.body_budget()
        items: list[tuple[NodeId, int, int]] = []
        for tid in open_ids[start:] + open_ids[:start]:
            budget -= len(tid.origin) + DIGEST_ITEM_BYTES
            if budget < 0 and items:
                break
            entry = tasks.table.get(tid)
            assert entry is not None
            items.append((tid.origin, tid.sequence, self.checksum_of(entry)))
        self._leader_cursor = start + len(items)
        tasks.context.count("task_leader_syncs_sent")
        tasks.send(info.address, TaskDigest(tuple(items), ()))

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
            elif self.checksum_of(mine) != crc:
                differing.append(mine)
        runs = list(self.tasks.table.collected.runs())[:MAX_RUNS_PER_SYNC]
        if differing or runs:
            self.send_entries(source, differing, runs, reply=True)
        if wanted:
            self.tasks.send(source, TaskWant(tuple(wanted)))

    def on_want(self, message: TaskWant, source: Address) -> None:
        table = self.tasks.table
        entries: list[TaskEntry] = []
        runs: list[tuple[NodeId, int, int]] = []
        for origin, sequence in message.ids:
            tid = TaskId(origin, sequence)
            entry = table.get(tid)
            if entry is not None:
                entries.append(entry)
                continue
            run = table.collected.run_of(tid)
            if run is not None and run not in runs and len(runs) < MAX_RUNS_PER_SYNC:
                runs.append(run)  # collected here: say so, the asker drops its copy too
        if entries or runs:
            self.send_entries(source, entries, runs, reply=False)

    def body_budget(self) -> int:
        return self.tasks.context.config.max_datagram_bytes - BODY_BUDGET_MARGIN

    def send_entries(
        self,
        address: Address,
        entries: list[TaskEntry],
        runs: list[tuple[NodeId, int, int]],
        reply: bool,
        handover: bool = False,
    ) -> None:
        """Send ``entries`` in as few datagrams as fit under the size limit (``handover``
        marks the last one, see :class:`TaskUpdate`)."""
        budget = self.body_budget() - 20 * len(runs)
        batch: list[TaskEntry] = []
        used = 0
        for entry in entries:
            size = entry_size(entry)
            if batch and used + size > budget:
                self.tasks.send(address, TaskUpdate(tuple(batch), tuple(runs), reply))
                runs = []
                batch, used = [], 0
            batch.append(entry)
            used += size
        if batch or runs or handover:
            self.tasks.send(address, TaskUpdate(tuple(batch), tuple(runs), reply, handover))


def checksum(entry: TaskEntry) -> int:
    """CRC-32 of the entry's wire form: equal entries, equal checksums, on every node."""
    packed: bytes = msgpack.packb(entry_to_wire(entry), use_bin_type=True)
    return zlib.crc32(packed)


def entry_size(entry: TaskEntry) -> int:
    packed: bytes = msgpack.packb(entry_to_wire(entry), use_bin_type=True)
    return len(packed) + 2
