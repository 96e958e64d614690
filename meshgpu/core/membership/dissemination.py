"""SWIM dissemination: gossip rounds, notices to accused members, push-pull, joining.

Every datagram piggybacks queued updates (``NodeContext.send``); while membership updates
are queued, a gossip round every ``gossip_interval`` sends them to ``gossip_fanout``
random members. A death is pushed to ``gossip_fanout`` peers at once, by the node that
declares it and by each node that first hears of it. Anti-entropy: every
``push_pull_interval`` a full member table goes to one random member, which answers with
its own (and the other components' ``anti_entropy_updates``).

Notices: a member that others accuse, or that sends to us while we hold it dead (or
suspect, with Lifeguard), is told so directly, at most once per probe period, so that a
live one refutes at once; that is also how both sides of a healed partition find each
other without external help.

The :class:`Dissemination` is a part of :class:`~meshgpu.core.membership.swim.Swim`,
which owns the timers and routes push-pull messages and timer keys here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshgpu.core.component import NodeContext
from meshgpu.core.membership.state import GONE_STATES, LIVE_STATES, SUSPECT, MemberInfo
from meshgpu.core.membership.table import MemberTable, push_pull_reason
from meshgpu.core.membership.wire import (
    PUSH_PULL_RECORD_BUDGET,
    Alive,
    AntiEntropy,
    Dead,
    Gossip,
    MemberRecord,
    PushPull,
    Suspect,
    encode_push_pull,
    encode_records,
    new_alive,
)
from meshgpu.core.messages import Envelope, Message, encode_item
from meshgpu.core.timers import Timers
from meshgpu.core.types import Address, NodeId

if TYPE_CHECKING:
    from meshgpu.core.component import Component


class Dissemination:
    """Gossip rounds, notices, push-pull exchanges and joins of one node."""

    def __init__(self, context: NodeContext, table: MemberTable, timers: Timers) -> None:
        self.context = context
        self.config = context.config
        self.table = table
        self.timers = timers
        self._last_notice: dict[NodeId, float] = {}
        self._last_unknown_join = -1e18
        self._last_revival_sync = -1e18
        self._discovered: dict[Address, NodeId | None] = {}
        self._push_pull_chunks: (
            tuple[tuple[MemberRecord, ...], list[tuple[MemberRecord, ...]]] | None
        ) = None
        self._packed_parts: list[tuple[tuple[MemberRecord, ...], bytes]] = []
        """Each part last sent and its records packed (``encode_records``): most parts of
        a table are the same records from one exchange to the next."""
        self.anti_entropy_source: list[Component] = []
        """Components whose ``anti_entropy_updates`` travel with our push-pull exchanges."""

    # --- gossip rounds -----------------------------------------------------------------

    def wake_gossip(self) -> None:
        """Invoked by the context when an update is queued: a gossip round is due."""
        if "gossip" not in self.timers:
            self.timers.schedule("gossip", self.context.now + self.config.gossip_interval)

    def gossip_round(self, now: float, reschedule: bool = True) -> None:
        """The ``gossip`` timer (and at once on a death): send queued updates to a few."""
        context = self.context
        if context.has_pending_updates():
            for node_id in self.table.sample_live(self.config.gossip_fanout):
                if not context.has_pending_updates():
                    break
                context.send(self.table.members[node_id].address, Gossip())
        if reschedule and context.has_pending_updates():
            self.timers.schedule("gossip", now + self.config.gossip_interval)

    # --- notices -------------------------------------------------------------------------

    def tell_accused(self, node_id: NodeId) -> None:
        """Invoked by the table when another node's accusation of a member we hold alive
        reached us (Lifeguard, generalised): the member is told directly (at most once
        per probe period), so that if it is alive it refutes at once."""
        now = self.context.now
        last = self._last_notice.get(node_id)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._last_notice[node_id] = now
        info = self.table.members[node_id]
        notice = Suspect(node_id, info.incarnation, self.table.node_id)
        self.context.count("notices_sent")
        self.context.send(info.address, Gossip(), [encode_item(notice)])

    def tell_sender(self, info: MemberInfo, source: Address, now: float) -> None:
        """A member we hold dead (or suspect, with Lifeguard) at its current incarnation
        sent to us: tell it so directly (at most once per probe period); it refutes."""
        if info.state is SUSPECT and not self.config.uses_buddy:
            return
        node_id = info.node_id
        last = self._last_notice.get(node_id)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._last_notice[node_id] = now
        notice: Message
        if info.state is SUSPECT:
            notice = Suspect(node_id, info.incarnation, self.table.node_id)
        else:
            notice = Dead(node_id, info.incarnation, self.table.node_id)
        self.context.count("notices_sent")
        self.context.send(source, Gossip(), [encode_item(notice)])

    def answer_accuser(self, source: Address) -> None:
        """We were told directly that we are suspect or dead: answer with our Alive at once,
        so the teller revives us without waiting for gossip."""
        if not self.table.leaving:
            self.context.send(source, Gossip(), [encode_item(self.table.self_alive())])

    def forget(self, node_id: NodeId) -> None:
        """The member was forgotten (its retention passed)."""
        self._last_notice.pop(node_id, None)

    # --- anti-entropy --------------------------------------------------------------------

    def push_pull_tick(self, now: float) -> None:
        """The ``push_pull`` timer: exchange tables with one random member."""
        period = self.config.push_pull_period(self.table.size())
        self.timers.schedule("push_pull", now + period)
        if self.table.leaving:
            return
        peers = self.table.sample_live(1)
        if peers:
            self.context.count("push_pulls")
            self.send_push_pull(self.table.members[peers[0]].address, reply=False)

    def revival_sync(self, address: Address, now: float) -> None:
        """Direct contact from a member we held gone: exchange full state at once (at most
        once per reconnect interval: a flapping slow member must not make every node ship
        its table on every comeback)."""
        if now - self._last_revival_sync >= self.config.reconnect_interval:
            self._last_revival_sync = now
            self.context.count("revival_push_pulls")
            self.send_push_pull(address, reply=False)

    def send_push_pull(
        self, address: Address, reply: bool, extra: list[Message] | None = None
    ) -> None:
        """Send our whole member table to ``address``, in as many datagrams as it takes,
        followed by the components' anti-entropy updates (``extra``)."""
        records = self.table.records()
        cached = self._push_pull_chunks
        if cached is not None and cached[0] is records:
            chunks = cached[1]
        else:
            chunks = self.table.record_parts()
            self._push_pull_chunks = (records, chunks)
        packed_parts = self._packed_parts
        kept = len(packed_parts)
        for part, chunk in enumerate(chunks):
            body = PushPull(reply, part, len(chunks), chunk)
            if part < kept and packed_parts[part][0] == chunk:
                packed = packed_parts[part][1]
                packed_parts[part] = (chunk, packed)  # (the older equal tuple is let go)
            else:
                packed = encode_records(chunk)
                if part < kept:
                    packed_parts[part] = (chunk, packed)
                else:
                    packed_parts.append((chunk, packed))
                    kept += 1
            self.context.send(address, body, encoded_body=encode_push_pull(body, packed))
        del packed_parts[len(chunks) :]
        self._send_items(address, [encode_item(m) for m in extra or []])

    def _send_items(self, address: Address, items: list[bytes]) -> None:
        budget = PUSH_PULL_RECORD_BUDGET
        batch: list[bytes] = []
        used = 0
        for item in items:
            if batch and (
                used + len(item) > budget or len(batch) >= self.config.max_piggyback_updates
            ):
                self.context.send(address, AntiEntropy(), batch)
                batch, used = [], 0
            batch.append(item)
            used += len(item)
        if batch:
            self.context.send(address, AntiEntropy(), batch)

    def on_push_pull(
        self, envelope: Envelope, message: PushPull, source: Address, now: float
    ) -> None:
        """Merge a peer's table; answer a request (part 0) with ours."""
        self.context.count("push_pull_records_received", len(message.members))
        table = self.table
        apply_record = table.apply_record
        members = table.members
        me = table.node_id
        sender = envelope.sender
        joined: dict[NodeId, Alive] = {}
        for record in message.members:
            # apply_record's first test without the call: an alive record at or below the
            # incarnation we hold changes nothing. Nearly every record is one, and the
            # records per event are what grows with the mesh (a table of n records every
            # push-pull period, which grows only as log n).
            if record.state == "alive":
                info = members.get(record.node_id)
                if info is None:
                    if record.node_id != me and record.node_id not in joined:
                        # A member new to us: merged with the others of the part in one
                        # pass (add_members), in their order. (A second record about it
                        # in the same part, from a peer that is not this code, is merged
                        # after the first, as before.)
                        joined[record.node_id] = new_alive(
                            record.node_id, record.address, record.incarnation
                        )
                        continue
                elif record.incarnation <= info.incarnation and record.node_id != me:
                    continue
            if joined:
                table.add_members(list(joined.values()), push_pull_reason(sender), now)
                joined = {}
            apply_record(record, sender, now)
        if joined:
            table.add_members(list(joined.values()), push_pull_reason(sender), now)
        if not message.reply and message.part == 0:
            extra: list[Message] = []
            for component in self.anti_entropy_source:
                extra.extend(component.anti_entropy_updates())
            self.send_push_pull(source, reply=True, extra=extra)

    # --- joining -------------------------------------------------------------------------

    def join(self, address: Address) -> None:
        """Introduce ourselves to a peer found by mDNS or a seed list."""
        self.context.count("join_attempts")
        extra: list[Message] = []
        for component in self.anti_entropy_source:
            extra.extend(component.anti_entropy_updates())
        self.send_push_pull(address, reply=False, extra=extra)

    def join_unknown_pinger(self, source: Address, now: float) -> None:
        """A node we do not know pinged us: at most once per probe period, ask it for its
        table (a join from our side); its reply introduces it, so gossip missed during
        start-up heals at once."""
        if now - self._last_unknown_join >= self.config.probe_interval:
            self._last_unknown_join = now
            self.join(source)

    def discover(self, address: Address, node_id: NodeId | None, now: float) -> None:
        """A peer was found (mDNS, seed list). With no live peer we join it at once;
        otherwise discoveries are queued and at most one unknown one is joined per probe
        period (mDNS on a LAN reports every node to every node: n^2 discoveries, nearly all
        of which gossip has made known by the time their turn comes)."""
        if self._is_known(address, node_id):
            return
        if not self.table.live:
            self.join(address)
            return
        self._discovered[address] = node_id
        if "discover" not in self.timers:
            self.timers.schedule("discover", now + self.config.probe_interval)

    def _is_known(self, address: Address, node_id: NodeId | None) -> bool:
        if address == self.context.address or node_id == self.table.node_id:
            return True
        if node_id is not None:
            info = self.table.members.get(node_id)
            return info is not None and info.state in LIVE_STATES
        return any(
            info.address == address and info.state not in GONE_STATES
            for info in self.table.members.values()
        )

    def discover_tick(self, now: float) -> None:
        """The ``discover`` timer: join the next queued discovery still unknown."""
        while self._discovered:
            address = next(iter(self._discovered))
            node_id = self._discovered.pop(address)
            if not self._is_known(address, node_id):
                self.join(address)
                break
        if self._discovered:
            self.timers.schedule("discover", now + self.config.probe_interval)
