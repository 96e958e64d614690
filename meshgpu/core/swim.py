"""SWIM failure detection and dissemination as a node component (with Lifeguard).

Each protocol period (``probe_interval``, stretched by local health) the node pings one
member, in a shuffled round-robin order (suspects first, when ``probe_suspects_first``).
No ack within ``probe_timeout`` -> ``indirect_checks`` random peers are asked to ping it
(``PingReq``); they forward its ack, or (Lifeguard) send a ``Nack`` when they heard
nothing. No ack by the end of the period -> the member is suspected. A prober that got
neither ack nor nacks raises its own health score: probably it is the slow one.

Dissemination: every datagram piggybacks queued updates; while updates are queued, a
gossip round every ``gossip_interval`` sends them to ``gossip_fanout`` random members.
A death is pushed to ``gossip_fanout`` peers at once, by the node that declares it and by
each node that first hears of it. Anti-entropy: every ``push_pull_interval`` a full member
table goes to one random member, which answers with its own.

Reconnection: every ``reconnect_interval`` up to ``reconnect_fanout`` remembered-dead
members are pinged. Any datagram from a member we hold dead (or suspect, with Lifeguard)
gets it told so at once, directly; it refutes with a higher incarnation, which revives it
everywhere. Both sides of a healed partition thus find each other without any external
help.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.membership import ALIVE, DEAD, GONE_STATES, LIVE_STATES, SUSPECT, MemberTable
from meshgpu.core.messages import (
    Ack,
    Alive,
    AntiEntropy,
    Dead,
    Envelope,
    Gossip,
    Left,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    encode_item,
    new_ack,
    new_ping,
)
from meshgpu.core.suspicion import LocalHealth
from meshgpu.core.timers import Timers
from meshgpu.core.types import Address, NodeId

_REAP_INTERVAL = 1.0
"""How often remembered-dead members are checked for expiry (cheap; dead set only)."""

_RELAY_NACK_FRACTION = 0.7
"""A relay that heard no ack sends its nack after this fraction of ``probe_timeout``."""

_PUSH_PULL_RECORD_BUDGET = 1150
"""Bytes of member records per push-pull datagram (leaves room for header and updates)."""


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


def _chunk_records(records: tuple[MemberRecord, ...]) -> list[tuple[MemberRecord, ...]]:
    """Split a table into push-pull parts that each fit one datagram."""
    chunks: list[list[MemberRecord]] = [[]]
    used = 0
    for record in records:
        size = len(record.node_id) + len(record.address[0]) + 16
        if used + size > _PUSH_PULL_RECORD_BUDGET and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(record)
        used += size
    return [tuple(chunk) for chunk in chunks]


class Swim(Component):
    """Probing, gossip rounds, push-pull and reconnection around a :class:`MemberTable`."""

    message_types = (Ping, Ack, PingReq, Nack, Gossip, AntiEntropy, PushPull)
    update_types = (Alive, Suspect, Dead, Left)

    def __init__(self, context: NodeContext, now: float) -> None:
        self.context = context
        self.config = context.config
        self.rng = context.rng
        self.health = LocalHealth(self.config.awareness_max_multiplier)
        self.table = MemberTable(context, self.health, now)
        self.timers = Timers()
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[NodeId] = []
        self._probe_index = 0
        self._priority: dict[NodeId, None] = {}
        self._relays: dict[int, _Relay] = {}
        self._last_notice: dict[NodeId, float] = {}
        self._last_unknown_join = -1e18
        self._last_revival_sync = -1e18
        self._discovered: dict[Address, NodeId | None] = {}
        self._push_pull_chunks: (
            tuple[tuple[MemberRecord, ...], list[tuple[MemberRecord, ...]]] | None
        ) = None
        self.anti_entropy_source: list[Component] = []
        """Components whose ``anti_entropy_updates`` travel with our push-pull exchanges."""
        table = self.table
        table.on_suspicion_scheduled = self._schedule_suspicion
        table.on_suspicion_cleared = lambda node_id: self.timers.cancel(("suspicion", node_id))
        table.on_new_suspect = self._on_new_suspect
        table.on_gone = self._on_gone
        table.on_new_member = self._on_new_member
        table.on_hearsay = self._tell_accused
        context.on_broadcast = self._wake_gossip
        # Announce ourselves with the first datagrams we send (memberlist does the same).
        context.broadcast(("member", context.node_id), self.table.self_alive(), membership=True)
        # Spread the first probe over one period so nodes started together do not beat in step.
        self.timers.schedule("probe", now + self.rng.random() * self.config.probe_interval)
        self.timers.schedule("push_pull", now + self.rng.random() * self.config.push_pull_interval)

    # --- timers ---------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return self.timers.next_deadline()

    def deadline_source(self) -> Callable[[], float]:
        return self.timers.next_deadline  # one call less per event than next_deadline

    def on_tick(self, now: float) -> None:
        for key in self.timers.pop_due(now):
            if key == "probe":
                self._probe_tick(now)
            elif key == "probe_direct":
                self._probe_direct_timeout(now)
            elif key == "gossip":
                self._gossip_round(now)
            elif key == "push_pull":
                self._push_pull_tick(now)
            elif key == "reconnect":
                self._reconnect_tick(now)
            elif key == "reap":
                self._reap(now)
            elif key == "discover":
                self._discover_tick(now)
            elif isinstance(key, tuple) and key[0] == "suspicion":
                self._suspicion_expired(key[1], now)
            elif isinstance(key, tuple) and key[0] == "relay":
                self._relay_expired(key[1])

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _wake_gossip(self) -> None:
        if "gossip" not in self.timers:
            self.timers.schedule("gossip", self.context.now + self.config.gossip_interval)

    def _schedule_suspicion(self, node_id: NodeId, deadline: float) -> None:
        self.timers.schedule(("suspicion", node_id), deadline)

    def _on_new_suspect(self, node_id: NodeId) -> None:
        if self.config.probe_suspects_first:
            self._priority[node_id] = None

    def _tell_accused(self, node_id: NodeId) -> None:
        """Lifeguard, generalised: a member others accuse is told directly (at most once
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

    def _on_new_member(self, node_id: NodeId) -> None:
        # memberlist: a new member goes at a random place in the remaining probe order.
        order = self._probe_order
        position = self.rng.randint(min(self._probe_index, len(order)), len(order))
        order.insert(position, node_id)

    def _on_gone(self, node_id: NodeId) -> None:
        # Push the news at once rather than waiting for the next gossip round.
        now = self.context.now
        self._gossip_round(now, reschedule=False)
        self._watch_gone(now)

    def _watch_gone(self, now: float) -> None:
        """Reconnection and expiry timers run only while someone is remembered dead."""
        if "reconnect" not in self.timers:
            self.timers.schedule("reconnect", now + self.config.reconnect_interval)
        if "reap" not in self.timers:
            self.timers.schedule("reap", now + _REAP_INTERVAL)

    # --- probing ---------------------------------------------------------------------------

    def _scaled(self, duration: float) -> float:
        return self.health.scale(duration) if self.config.uses_health_probe else duration

    def _next_target(self) -> NodeId | None:
        members = self.table.members
        while self._priority:
            node_id = next(iter(self._priority))
            del self._priority[node_id]
            info = members.get(node_id)
            if info is not None and info.state is SUSPECT:
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
        return None

    def _probe_tick(self, now: float) -> None:
        if self._probe is not None:
            self._probe_failed(self._probe, now)
            self._probe = None
        self.timers.cancel("probe_direct")
        if self.table.leaving:
            return
        config = self.config
        # _scaled and LocalHealth.scale inlined (twice per probe): duration * (1 + score)
        score = self.health.score
        interval = config.probe_interval
        self.timers.schedule(
            "probe", now + (interval * (1 + score) if config.uses_health_probe else interval)
        )
        target = self._next_target()
        if target is None:
            return
        info = self.table.members[target]
        self._seq = seq = self._seq + 1  # _next_seq inlined (once per probe)
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
        context.send(info.address, new_ping(seq, target), extra)  # = Ping(seq, target)
        timeout = config.probe_timeout
        self.timers.schedule(
            "probe_direct", now + (timeout * (1 + score) if config.uses_health_probe else timeout)
        )

    def _probe_direct_timeout(self, now: float) -> None:
        probe = self._probe
        if probe is None:
            return
        candidates = [
            n for n in self._sample_live(self.config.indirect_checks + 1) if n != probe.target
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

    def _sample_live(self, count: int) -> list[NodeId]:
        live = self.table.live
        if len(live) <= count:
            chosen = list(live)
            self.rng.shuffle(chosen)
            return chosen
        return self.rng.sample(live, count)

    # --- messages --------------------------------------------------------------------------

    def on_message(self, envelope: Envelope, message: Message, source: Address, now: float) -> None:
        kind = type(message)
        if kind is Ping:
            ping: Ping = message  # type: ignore[assignment]
            if ping.target == self.table.node_id:  # answer_ping inlined: once per probe
                self.context.send(source, new_ack(ping.seq))  # = Ack(ping.seq)
            else:
                self.answer_ping(ping, source)  # counts the misdirected ping
        elif kind is Ack:
            self._on_ack(message)  # type: ignore[arg-type]
        elif isinstance(message, PingReq):
            seq = self._next_seq()
            self._relays[seq] = _Relay(source, message.seq, message.want_nack)
            # Nack early enough to reach the prober before its period ends (it asked at
            # probe_timeout into the period; a late nack reads as "the prober is slow").
            self.timers.schedule(
                ("relay", seq), now + _RELAY_NACK_FRACTION * self.config.probe_timeout
            )
            self.context.send(message.target_address, Ping(seq, message.target))
        elif isinstance(message, Nack):
            if self._probe is not None and self._probe.seq == message.seq:
                self._probe.nacks += 1
        elif isinstance(message, PushPull):
            self.on_push_pull(envelope, message, source, now)

    def answer_unknown_ping(self, ping: Ping, source: Address, now: float) -> None:
        """A ping from a node we do not know: ack it statelessly (so it does not suspect
        us), and, at most once per probe period, ask it for its table (a join from our
        side): its reply introduces it, so gossip missed during start-up heals at once."""
        self.answer_ping(ping, source)
        addressed_to_us = ping.target == self.table.node_id and not self.table.leaving
        if addressed_to_us and now - self._last_unknown_join >= self.config.probe_interval:
            self._last_unknown_join = now
            self.join(source)

    def answer_ping(self, ping: Ping, source: Address) -> None:
        """Ack a ping addressed to us (also done, statelessly, for unknown senders)."""
        if ping.target != self.table.node_id:
            self.context.count("pings_misdirected")
            return
        self.context.send(source, new_ack(ping.seq))  # = Ack(ping.seq)

    def _on_ack(self, ack: Ack) -> None:
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

    def _relay_expired(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.want_nack:
            self.context.send(relay.requester, Nack(relay.seq))

    def on_update(self, envelope: Envelope, update: Message, source: Address, now: float) -> None:
        table = self.table
        kind = type(update)
        if kind is Alive:
            # Fast path for the commonest update of a mesh forming: news we already hold
            # (each Alive reaches every node about lambda*log(n) times). Same outcome as
            # apply_alive returning False, without building its reason string.
            alive: Alive = update  # type: ignore[assignment]
            info = table.members.get(alive.node_id)
            known = info is not None and alive.incarnation <= info.incarnation
            if known and alive.node_id != table.node_id:
                return
            table.apply_alive(alive, now, f"gossip from {envelope.sender}")
            return
        via = f"gossip from {envelope.sender}"
        if isinstance(update, Suspect):
            about_me = update.node_id == table.node_id
            table.apply_suspect(update, now, via)
            if about_me and envelope.sender == update.accuser:
                self._answer_accuser(source)
        elif isinstance(update, Dead):
            about_me = update.node_id == table.node_id
            table.apply_dead(update, now, f"declared dead by {update.accuser}")
            if about_me:
                self._answer_accuser(source)
        elif isinstance(update, Left):
            table.apply_left(update, now, "left the mesh")

    def _answer_accuser(self, source: Address) -> None:
        """We were told directly that we are suspect or dead: answer with our Alive at once,
        so the teller revives us without waiting for gossip."""
        if not self.table.leaving:
            self.context.send(source, Gossip(), [encode_item(self.table.self_alive())])

    def observe_sender(self, envelope: Envelope, source: Address, now: float) -> None:
        """Use the header of a datagram from a known member.

        A higher incarnation than we hold proves the sender alive (refutation, re-join after
        a partition). A sender we hold dead (or suspect, with Lifeguard) at its current
        incarnation is told so directly, so it refutes at once.
        """
        table = self.table
        info = table.members[envelope.sender]
        if envelope.incarnation > info.incarnation:
            revived = info.state in GONE_STATES
            table.apply_alive(
                Alive(envelope.sender, info.address, envelope.incarnation),
                now,
                "newer incarnation seen",
            )
            if revived and now - self._last_revival_sync >= self.config.reconnect_interval:
                # Direct contact across a healed partition: exchange full state at once
                # (at most once per reconnect interval: a flapping slow member must not
                # make every node ship its table on every comeback).
                self._last_revival_sync = now
                self.context.count("revival_push_pulls")
                self.send_push_pull(info.address, reply=False)
            return
        if info.state is ALIVE:
            return
        if info.state is SUSPECT and not self.config.uses_buddy:
            return
        last = self._last_notice.get(envelope.sender)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._last_notice[envelope.sender] = now
        notice: Message
        if info.state is SUSPECT:
            notice = Suspect(envelope.sender, info.incarnation, table.node_id)
        else:
            notice = Dead(envelope.sender, info.incarnation, table.node_id)
        self.context.count("notices_sent")
        self.context.send(source, Gossip(), [encode_item(notice)])

    # --- gossip rounds --------------------------------------------------------------------

    def _gossip_round(self, now: float, reschedule: bool = True) -> None:
        context = self.context
        if context.has_pending_updates():
            for node_id in self._sample_live(self.config.gossip_fanout):
                if not context.has_pending_updates():
                    break
                context.send(self.table.members[node_id].address, Gossip())
        if reschedule and context.has_pending_updates():
            self.timers.schedule("gossip", now + self.config.gossip_interval)

    # --- anti-entropy ----------------------------------------------------------------------

    def _push_pull_tick(self, now: float) -> None:
        period = self.config.push_pull_period(self.table.size())
        self.timers.schedule("push_pull", now + period)
        if self.table.leaving:
            return
        peers = self._sample_live(1)
        if peers:
            self.context.count("push_pulls")
            self.send_push_pull(self.table.members[peers[0]].address, reply=False)

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
            chunks = _chunk_records(records)
            self._push_pull_chunks = (records, chunks)
        for part, chunk in enumerate(chunks):
            self.context.send(address, PushPull(reply, part, len(chunks), chunk))
        self._send_items(address, [encode_item(m) for m in extra or []])

    def _send_items(self, address: Address, items: list[bytes]) -> None:
        budget = _PUSH_PULL_RECORD_BUDGET
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
        for record in message.members:
            self.table.apply_record(record, envelope.sender, now)
        if not message.reply and message.part == 0:
            extra: list[Message] = []
            for component in self.anti_entropy_source:
                extra.extend(component.anti_entropy_updates())
            self.send_push_pull(source, reply=True, extra=extra)

    def join(self, address: Address) -> None:
        """Introduce ourselves to a peer found by mDNS or a seed list."""
        self.context.count("join_attempts")
        extra: list[Message] = []
        for component in self.anti_entropy_source:
            extra.extend(component.anti_entropy_updates())
        self.send_push_pull(address, reply=False, extra=extra)

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

    def _discover_tick(self, now: float) -> None:
        while self._discovered:
            address = next(iter(self._discovered))
            node_id = self._discovered.pop(address)
            if not self._is_known(address, node_id):
                self.join(address)
                break
        if self._discovered:
            self.timers.schedule("discover", now + self.config.probe_interval)

    # --- reconnection, expiry, leaving ---------------------------------------------------

    def _reconnect_tick(self, now: float) -> None:
        if self.table.leaving:
            return
        dead = [n for n in self.table.gone if self.table.members[n].state is DEAD]
        if not dead:
            return
        self.timers.schedule("reconnect", now + self.config.reconnect_interval)
        for node_id in self.rng.sample(dead, min(self.config.reconnect_fanout, len(dead))):
            self.context.count("reconnect_pings")
            address = self.table.members[node_id].address
            self.context.send(address, Ping(self._next_seq(), node_id), piggyback=False)

    def _reap(self, now: float) -> None:
        retention = self.config.dead_retention
        members = self.table.members
        expired = [n for n in self.table.gone if now - members[n].state_since >= retention]
        for node_id in expired:
            self.table.forget(node_id)
            self._last_notice.pop(node_id, None)
        if self.table.gone:
            self.timers.schedule("reap", now + _REAP_INTERVAL)

    def _suspicion_expired(self, node_id: NodeId, now: float) -> None:
        self.table.expire_suspicion(node_id, now)

    def leave(self, now: float) -> None:
        """Announce our departure to a few peers at once, then only answer and gossip."""
        if self.table.leaving:
            return
        self.table.leave(now)
        self._probe = None
        self.timers.cancel("probe")
        self.timers.cancel("probe_direct")
        self._gossip_round(now)
