"""SWIM failure detection: who is probed, when, and what a failed probe does (Lifeguard).

Each protocol period (``probe_interval``, stretched by local health) the node pings one
member, in a shuffled round-robin order (SWIM's time-bounded completeness). A member that
becomes suspect is probed out of turn (``probe_suspects_first``), but never two periods in
a row, so the round robin reaches every member within twice its bound however many
members are suspected.
No ack within ``probe_timeout`` -> ``indirect_checks`` random peers are asked to ping it
(``PingReq``); they forward its ack, or (Lifeguard) send a ``Nack`` when they heard
nothing. No ack by the end of the period -> the member is suspected. A prober that got
neither ack nor nacks raises its own health score: probably it is the slow one.

Reconnection: every ``reconnect_interval`` up to ``reconnect_fanout`` remembered-dead
members are pinged, so both sides of a healed partition find each other.

The :class:`Prober` is a part of :class:`~meshgpu.core.membership.swim.Swim`, which owns
the timers and routes the probe messages and timer keys here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshgpu.core.component import NodeContext
from meshgpu.core.membership.state import DEAD, GONE_STATES, LIVE_STATES, SUSPECT
from meshgpu.core.membership.table import MemberTable
from meshgpu.core.membership.wire import (
    Ack,
    Nack,
    Ping,
    PingReq,
    Suspect,
    new_ack,
    new_ping,
)
from meshgpu.core.messages import encode_item
from meshgpu.core.suspicion import LocalHealth
from meshgpu.core.timers import Timers
from meshgpu.core.types import Address, NodeId

RELAY_NACK_FRACTION = 0.7
"""A relay that heard no ack sends its nack after this fraction of ``probe_timeout``."""


@dataclass(slots=True)
class _Probe:
    target: NodeId
    seq: int
    started: float
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: Address
    seq: int
    want_nack: bool


class Prober:
    """The probe of this period, the probe order, and the pings relayed for others."""

    def __init__(
        self, context: NodeContext, table: MemberTable, timers: Timers, health: LocalHealth
    ) -> None:
        self.context = context
        self.config = context.config
        self.rng = context.rng
        self._randbelow: Callable[[int], int] = context.rng._randbelow  # type: ignore[attr-defined]
        """``random.Random``'s own draw of an int below n, which ``randint`` ends in."""
        self.table = table
        self.timers = timers
        self.health = health
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[NodeId] = []
        self._probe_index = 0
        self._in_round: set[NodeId] = set()
        """The members of this round's probe order (probed already or still due)."""
        self._priority: dict[NodeId, None] = {}
        self._last_was_priority = False
        """Whether this period's probe went to a suspect out of turn (the next one will not)."""
        self._relays: dict[int, _Relay] = {}

    def next_seq(self) -> int:
        """A fresh sequence number for a ping (probes, relays and reconnection share them)."""
        self._seq += 1
        return self._seq

    # --- the probe order ---------------------------------------------------------------

    def new_suspect(self, node_id: NodeId) -> None:
        """Invoked by the table when a member becomes suspect: probe it out of turn (in
        the next period, or the one after when this period's probe was out of turn)."""
        if self.config.probe_suspects_first:
            self._priority[node_id] = None

    def new_member(self, node_id: NodeId) -> None:
        """Invoked by the table for a new or revived member (memberlist: it goes at a
        random place in the remaining probe order). A member already in this round's
        order keeps its one place (memberlist's probe list holds each node once): a
        member declared dead and revived over and over (a slow one) otherwise gained a
        place at each revival, the round never ended, and the members probed early in
        it were not probed again (the Lifeguard study: a crashed healthy member went
        unprobed for 5.9 s, 4 of 50 members slow)."""
        if node_id in self._in_round:
            return
        self._in_round.add(node_id)
        order = self._probe_order
        end = len(order)
        low = min(self._probe_index, end)
        # rng.randint(low, end), without its two interpreted frames (randint calls
        # randrange, which returns low + _randbelow(end - low + 1)): the same draw, once per
        # member each node learns (a million as a 1,000-node mesh forms).
        order.insert(low + self._randbelow(end - low + 1), node_id)

    def new_members(self, node_ids: list[NodeId]) -> None:
        """Invoked by the table for members new to it, in the order they joined:
        :meth:`new_member` of each (the same draws, in the same order), in one call."""
        in_round = self._in_round
        order = self._probe_order
        randbelow = self._randbelow
        for node_id in node_ids:
            if node_id in in_round:
                continue
            in_round.add(node_id)
            end = len(order)
            low = min(self._probe_index, end)
            order.insert(low + randbelow(end - low + 1), node_id)

    def _next_target(self) -> NodeId | None:
        """The member to probe this period: a suspect out of turn, but never two periods
        in a row, so the round robin still reaches every member within twice SWIM's
        bound. (Unbounded, a stream of suspicions of slow members took every probe: in
        the Lifeguard study, with 8 of 50 members slow, no node probed a crashed healthy
        member for 21 s.)"""
        members = self.table.members
        if self._last_was_priority:
            self._last_was_priority = False
        else:
            while self._priority:
                node_id = next(iter(self._priority))
                del self._priority[node_id]
                info = members.get(node_id)
                if info is not None and info.state is SUSPECT:
                    self._last_was_priority = True
                    return node_id
        me = self.table.node_id
        for _ in range(2):
            order = self._probe_order
            index = self._probe_index
            while index < len(order):
                node_id = order[index]
                index += 1
                info = members.get(node_id)
                if info is not None and info.state in LIVE_STATES and node_id != me:
                    self._probe_index = index
                    return node_id
            self._probe_order = list(self.table.live)
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
            self._in_round = set(self._probe_order)
        return None

    # --- one protocol period -----------------------------------------------------------

    def probe_tick(self, now: float) -> None:
        """The ``probe`` timer: end the last period's probe, start this one's."""
        if self._probe is not None:
            self._probe_failed(self._probe, now)
            self._probe = None
        self.timers.cancel("probe_direct")
        if self.table.leaving:
            return
        config = self.config
        # LocalHealth.scale inlined (twice per probe): duration * (1 + score)
        score = self.health.score
        interval = config.probe_interval
        self.timers.schedule(
            "probe", now + (interval * (1 + score) if config.uses_health_probe else interval)
        )
        target = self._next_target()
        if target is None:
            return
        info = self.table.members[target]
        self._seq = seq = self._seq + 1  # next_seq inlined (once per probe)
        self._probe = _Probe(target, seq, now)
        extra: list[bytes] = []
        if config.uses_buddy and info.state is SUSPECT:
            # Lifeguard's buddy system: tell the suspect directly so it can refute at once.
            extra.append(encode_item(Suspect(target, info.incarnation, self.table.node_id)))
        context = self.context
        counters = context.counters
        try:  # context.count("probes") without its dict.get call: once per probe
            counters["probes"] += 1
        except KeyError:
            counters["probes"] = 1
        context.send(info.address, new_ping(seq, target), extra)
        timeout = config.probe_timeout
        self.timers.schedule(
            "probe_direct", now + (timeout * (1 + score) if config.uses_health_probe else timeout)
        )

    def direct_timeout(self, now: float) -> None:
        """The ``probe_direct`` timer: no ack yet, ask ``indirect_checks`` peers."""
        probe = self._probe
        if probe is None:
            return
        candidates = [
            n for n in self.table.sample_live(self.config.indirect_checks + 1) if n != probe.target
        ]
        candidates = candidates[: self.config.indirect_checks]
        target_info = self.table.members.get(probe.target)
        if target_info is None or not candidates:
            return
        want_nack = self.config.uses_health_probe
        for relay in candidates:
            self.context.send(
                self.table.members[relay].address,
                PingReq(probe.seq, probe.target, target_info.address, want_nack),
            )
        self.context.count("indirect_probes")
        if want_nack:
            probe.expected_nacks = len(candidates)

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self.context.count("probe_failures")
        if self.config.uses_health_probe:
            # Relays that answered with nacks are reachable: the fault is probably the
            # target's. Missing nacks point at us (Lifeguard, memberlist probeNode).
            # Unlike memberlist (+1 per missing nack), one nack is enough to clear us: a
            # relay answered in time, so our own messages flow; missing nacks then mean
            # unreachable relays (a partition), not slowness, and must not stretch our
            # timeouts (else the minority side of a partition detects nothing for seconds).
            if probe.expected_nacks == 0:
                self.health.apply(1)
            elif probe.nacks == 0:
                self.health.apply(probe.expected_nacks)
        info = self.table.members.get(probe.target)
        if info is None or info.state in GONE_STATES:
            return
        self.table.apply_suspect(
            Suspect(probe.target, info.incarnation, self.table.node_id), now, "probe failed"
        )

    def stop(self) -> None:
        """This node leaves: no more probes of its own."""
        self._probe = None
        self.timers.cancel("probe")
        self.timers.cancel("probe_direct")

    # --- probe messages ----------------------------------------------------------------

    def on_ping(self, ping: Ping, source: Address) -> None:
        """Ack a ping addressed to us (also done, statelessly, for unknown senders)."""
        if ping.target != self.table.node_id:
            self.context.count("pings_misdirected")
            return
        self.context.send(source, new_ack(ping.seq))  # = Ack(ping.seq)

    def on_ack(self, ack: Ack) -> None:
        """An ack: of our probe (no indirect round), or of a ping we relay (forward it)."""
        probe = self._probe
        if probe is not None and probe.seq == ack.seq:
            # our probe is answered: no indirect round, and (Lifeguard) one point of
            # health back (apply(-1) at score 0 changes nothing, so it is skipped)
            self._probe = None
            self.timers.cancel("probe_direct")
            if self.config.uses_health_probe and self.health.score:
                self.health.apply(-1)
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            self.timers.cancel(("relay", ack.seq))
            self.context.send(relay.requester, Ack(relay.seq))

    def on_ping_req(self, request: PingReq, source: Address, now: float) -> None:
        """Another node asks us to ping its probe's target for it."""
        seq = self.next_seq()
        self._relays[seq] = _Relay(source, request.seq, request.want_nack)
        # Nack early enough to reach the prober before its period ends (it asked at
        # probe_timeout into the period; a late nack reads as "the prober is slow").
        self.timers.schedule(("relay", seq), now + RELAY_NACK_FRACTION * self.config.probe_timeout)
        self.context.send(request.target_address, Ping(seq, request.target))

    def on_nack(self, nack: Nack) -> None:
        """A relay heard nothing from our target: it, at least, is reachable."""
        if self._probe is not None and self._probe.seq == nack.seq:
            self._probe.nacks += 1

    def relay_expired(self, seq: int) -> None:
        """The ``("relay", seq)`` timer: the target did not answer the relayed ping."""
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.want_nack:
            self.context.send(relay.requester, Nack(relay.seq))

    # --- reconnection ------------------------------------------------------------------

    def reconnect_tick(self, now: float) -> None:
        """The ``reconnect`` timer: ping a few members held dead (piggybacking nothing)."""
        table = self.table
        if table.leaving:
            return
        dead = [n for n in table.gone if table.members[n].state is DEAD]
        if not dead:
            return
        self.timers.schedule("reconnect", now + self.config.reconnect_interval)
        for node_id in self.rng.sample(dead, min(self.config.reconnect_fanout, len(dead))):
            self.context.count("reconnect_pings")
            address = table.members[node_id].address
            self.context.send(address, Ping(self.next_seq(), node_id), piggyback=False)
