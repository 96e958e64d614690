"""SWIM with the Lifeguard refinements as a node component: the membership component.

Das, Gupta and Motivala, "SWIM" (2002); Dadgar, Phillips and Currey, "Lifeguard: Local
Health Awareness for More Accurate Failure Detection" (2018); HashiCorp memberlist.

:class:`Swim` composes the parts of membership and routes to them:

* the member table and its merge rules (:mod:`.table`, with the transitions as data in
  :mod:`.state`);
* failure detection, probing and reconnection (:mod:`.probe`);
* dissemination: gossip rounds, notices, push-pull, joins (:mod:`.dissemination`);
* Lifeguard's local health and suspicion timeouts (:mod:`meshgpu.core.suspicion`).

It owns the timers (one :class:`~meshgpu.core.timers.Timers`, keyed by what is due) and
hears the table's changes (:class:`~.table.TableListener`), which it passes on to the
part concerned.
"""

from __future__ import annotations

from collections.abc import Callable

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.membership.dissemination import Dissemination
from meshgpu.core.membership.probe import Prober
from meshgpu.core.membership.state import ALIVE, GONE_STATES
from meshgpu.core.membership.table import MemberTable, gossip_reason
from meshgpu.core.membership.wire import (
    Ack,
    Alive,
    AntiEntropy,
    Dead,
    Gossip,
    Left,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from meshgpu.core.messages import Envelope, Message
from meshgpu.core.suspicion import LocalHealth
from meshgpu.core.timers import Timers
from meshgpu.core.types import Address, NodeId

REAP_INTERVAL = 1.0
"""How often remembered-dead members are checked for expiry (cheap; dead set only)."""


class Swim(Component):
    """Membership: the table, probing, dissemination and reconnection of one node."""

    message_types = (Ping, Ack, PingReq, Nack, Gossip, AntiEntropy, PushPull)
    update_types = (Alive, Suspect, Dead, Left)

    def __init__(self, context: NodeContext, now: float) -> None:
        self.context = context
        self.config = context.config
        self.rng = context.rng
        self.health = LocalHealth(self.config.awareness_max_multiplier)
        self.timers = Timers()
        self.table = MemberTable(context, self.health, now, listener=self)
        self.prober = Prober(context, self.table, self.timers, self.health)
        self.dissemination = Dissemination(context, self.table, self.timers)
        self.anti_entropy_source = self.dissemination.anti_entropy_source
        """Components whose ``anti_entropy_updates`` travel with our push-pull exchanges."""
        context.on_broadcast = self.dissemination.wake_gossip
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
        prober = self.prober
        for key in self.timers.pop_due(now):
            if key == "probe":
                prober.probe_tick(now)
            elif key == "probe_direct":
                prober.direct_timeout(now)
            elif key == "gossip":
                self.dissemination.gossip_round(now)
            elif key == "push_pull":
                self.dissemination.push_pull_tick(now)
            elif key == "reconnect":
                prober.reconnect_tick(now)
            elif key == "reap":
                self._reap(now)
            elif key == "discover":
                self.dissemination.discover_tick(now)
            elif isinstance(key, tuple) and key[0] == "suspicion":
                self.table.expire_suspicion(key[1], now)
            elif isinstance(key, tuple) and key[0] == "relay":
                prober.relay_expired(key[1])

    # --- what the table tells us (TableListener) ------------------------------------------

    def suspicion_scheduled(self, node_id: NodeId, deadline: float) -> None:
        self.timers.schedule(("suspicion", node_id), deadline)

    def suspicion_cleared(self, node_id: NodeId) -> None:
        self.timers.cancel(("suspicion", node_id))

    def new_suspect(self, node_id: NodeId) -> None:
        self.prober.new_suspect(node_id)

    def new_member(self, node_id: NodeId) -> None:
        self.prober.new_member(node_id)

    def new_members(self, node_ids: list[NodeId]) -> None:
        self.prober.new_members(node_ids)

    def hearsay(self, node_id: NodeId) -> None:
        self.dissemination.tell_accused(node_id)

    def gone(self, node_id: NodeId) -> None:
        # Push the news at once rather than waiting for the next gossip round.
        now = self.context.now
        self.dissemination.gossip_round(now, reschedule=False)
        self._watch_gone(now)

    def _watch_gone(self, now: float) -> None:
        """Reconnection and expiry timers run only while someone is remembered dead."""
        if "reconnect" not in self.timers:
            self.timers.schedule("reconnect", now + self.config.reconnect_interval)
        if "reap" not in self.timers:
            self.timers.schedule("reap", now + REAP_INTERVAL)

    # --- messages --------------------------------------------------------------------------

    def on_message(self, envelope: Envelope, message: Message, source: Address, now: float) -> None:
        kind = type(message)
        if kind is Ping:
            self.prober.on_ping(message, source)  # type: ignore[arg-type]
        elif kind is Ack:
            self.prober.on_ack(message)  # type: ignore[arg-type]
        elif isinstance(message, PingReq):
            self.prober.on_ping_req(message, source, now)
        elif isinstance(message, Nack):
            self.prober.on_nack(message)
        elif isinstance(message, PushPull):
            self.dissemination.on_push_pull(envelope, message, source, now)

    def answer_unknown_ping(self, ping: Ping, source: Address, now: float) -> None:
        """Invoked by the node for a ping from a node we do not know: ack it statelessly
        (so it does not suspect us), and ask it for its table (a join from our side)."""
        self.prober.on_ping(ping, source)
        if ping.target == self.table.node_id and not self.table.leaving:
            self.dissemination.join_unknown_pinger(source, now)

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
            table.apply_alive(alive, now, gossip_reason(envelope.sender))
            return
        via = gossip_reason(envelope.sender)
        if isinstance(update, Suspect):
            about_me = update.node_id == table.node_id
            table.apply_suspect(update, now, via)
            if about_me and envelope.sender == update.accuser:
                self.dissemination.answer_accuser(source)
        elif isinstance(update, Dead):
            about_me = update.node_id == table.node_id
            table.apply_dead(update, now, f"declared dead by {update.accuser}")
            if about_me:
                self.dissemination.answer_accuser(source)
        elif isinstance(update, Left):
            table.apply_left(update, now, "left the mesh")

    def on_joins(self, envelope: Envelope, joins: list[Alive], now: float) -> None:
        """Invoked by the node with the piggybacked joins of members new to us, in the
        order they came (consecutive updates of one datagram): ``on_update`` of each,
        merged in one pass (:meth:`MemberTable.add_members`)."""
        self.table.add_members(joins, gossip_reason(envelope.sender), now)

    def observe_sender(self, envelope: Envelope, source: Address, now: float) -> None:
        """Invoked by the node with the header of a datagram from a known member.

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
            if revived:
                self.dissemination.revival_sync(info.address, now)
            return
        if info.state is ALIVE:
            return
        self.dissemination.tell_sender(info, source, now)

    # --- discovery, expiry, leaving --------------------------------------------------------

    def discover(self, address: Address, node_id: NodeId | None, now: float) -> None:
        """Invoked by the node for a ``PeerDiscovered`` (mDNS, seed list)."""
        self.dissemination.discover(address, node_id, now)

    def _reap(self, now: float) -> None:
        retention = self.config.dead_retention
        members = self.table.members
        expired = [n for n in self.table.gone if now - members[n].state_since >= retention]
        for node_id in expired:
            self.table.forget(node_id)
            self.dissemination.forget(node_id)
        if self.table.gone:
            self.timers.schedule("reap", now + REAP_INTERVAL)

    def leave(self, now: float) -> None:
        """Announce our departure to a few peers at once, then only answer and gossip."""
        if self.table.leaving:
            return
        self.table.leave(now)
        self.prober.stop()
        self.dissemination.gossip_round(now)
