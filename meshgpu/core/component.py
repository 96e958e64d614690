"""How a :class:`~meshgpu.core.node.Node` is composed: components and their shared context.

A node is a small set of components (membership, load gossip, leadership, and later the
task queue). Each one owns its state and its message types; the node decodes datagrams,
dispatches each body and each piggybacked update to the component that registered its
type, asks every component for its next deadline, and collects the effects they emit.

Components talk to the world only through the :class:`NodeContext`:

* ``send(address, body)`` encodes a datagram with this node's header (id, incarnation,
  view) and fills the remaining space with queued updates (piggybacking);
* ``broadcast(key, update)`` queues an update for gossip (newer replaces older by key);
* ``emit(effect)`` returns a notification or an instruction to the driver;
* ``member_changed`` fan-out: every component hears about membership changes.

To add a component (the task queue does): subclass :class:`Component`, list the body and
update types it handles in ``message_types`` / ``update_types`` (register them with
``messages.register_message``), and pass it to ``Node.add_component``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, ClassVar

from meshgpu.core.broadcast import BroadcastQueue
from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import Effect, SendDatagram, new_send_datagram
from meshgpu.core.messages import (
    EMPTY_PIGGYBACK,
    Envelope,
    Message,
    decode_items,
    decode_message,
    encode_body,
    encode_item,
    encode_shared_item,
    envelope_prefix,
    new_envelope,
)
from meshgpu.core.types import Address, NodeId
from meshgpu.errors import DecodeError

if TYPE_CHECKING:
    from meshgpu.core.membership import MemberInfo


class NodeContext:
    """What every component of one node shares: identity, config, rng, queues, effects."""

    def __init__(
        self, node_id: NodeId, address: Address, config: MeshConfig, rng: random.Random
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.config = config
        self.rng = rng
        self.now = 0.0
        self.incarnation = 0
        """This node's incarnation, stamped on every datagram (owned by membership)."""
        self.view = 0
        """This node's leader view, stamped on every datagram (owned by the leader)."""
        self.cluster_size = 1
        """Live members including self (owned by membership); sizes retransmit limits."""
        self.effects: list[Effect] = []
        self.counters: dict[str, int] = {}
        self.member_queue = BroadcastQueue()
        """Membership updates: piggybacked first."""
        self.update_queue = BroadcastQueue()
        """Every other component's updates: fill the space membership leaves."""
        self._limit_size = 0
        self._limit = 1
        self._prefix = b""
        self._prefix_incarnation = -1
        self._prefix_view = -1
        """``envelope_prefix`` of the incarnation and view it was built for (see send)."""
        self.keep_decoded = False
        """Whether each ``SendDatagram`` carries its datagram decoded (``decoded``), for a
        driver that delivers it to a node in the same process (the simulator): the
        receiver then skips decoding. Off in the daemon, whose datagrams cross a socket."""
        self.member_listeners: list[Callable[[MemberInfo, MemberInfo | None], None]] = []
        self.members_joined_listeners: list[Callable[[list[MemberInfo]], None]] = []
        """Each member listener's batch form (:meth:`members_joined`), in the same order."""
        self.on_broadcast: Callable[[], None] = lambda: None
        """Called when an update is queued (membership schedules a gossip round)."""

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a named counter (exposed as ``Node.counters``)."""
        self.counters[name] = self.counters.get(name, 0) + amount

    def emit(self, effect: Effect) -> None:
        """Hand an effect to the driver (in order)."""
        self.effects.append(effect)

    def send(
        self,
        address: Address,
        body: Message,
        extra_items: Sequence[bytes] = (),
        piggyback: bool = True,
        encoded_body: bytes | None = None,
    ) -> SendDatagram:
        """Send ``body`` to ``address``, with ``extra_items`` (pre-encoded, always included)
        and as many queued updates as fit under the datagram size (none with
        ``piggyback=False``: for datagrams that probably reach nobody, such as pings to
        members held dead, which would spend the updates' retransmissions for nothing).
        ``encoded_body``: ``encode_body(body)``'s bytes, when the caller has them cheaper
        (push-pull parts). Returns the ``SendDatagram`` effect it emitted."""
        counters = self.counters
        try:  # (no dict.get call per datagram; the key exists after the first one)
            counters["datagrams_sent"] += 1
        except KeyError:
            counters["datagrams_sent"] = 1
        member_queue = self.member_queue
        update_queue = self.update_queue
        # The header kept since our incarnation or view last moved: msgpack writes an
        # array as its header and then each element, so a datagram is this prefix, the
        # body's bytes and the piggyback array (encode_bare's and finish_datagram's bytes).
        incarnation = self.incarnation
        view = self.view
        if incarnation != self._prefix_incarnation or view != self._prefix_view:
            self._prefix = envelope_prefix(self.node_id, incarnation, view)
            self._prefix_incarnation = incarnation
            self._prefix_view = view
        encoded = encode_body(body) if encoded_body is None else encoded_body
        if not extra_items and (
            not piggyback or (not member_queue.queued and not update_queue.queued)
        ):
            # Fast path (most pings and acks in a quiet mesh): nothing to piggyback.
            effect = new_send_datagram(
                address,
                self._prefix + encoded + EMPTY_PIGGYBACK,
                self._decoded(body, (), encoded) if self.keep_decoded else None,
            )
            self.effects.append(effect)
            return effect
        config = self.config
        # (the head encode_head would give is the prefix grown to 5 elements and the body)
        budget = config.max_datagram_bytes - len(self._prefix) - len(encoded) - 3
        max_items = config.max_piggyback_updates
        items: list[bytes] = []
        if extra_items:
            items = list(extra_items)
            budget -= sum(map(len, items))
        size = self.cluster_size
        if self._limit_size != size:
            self._limit_size = size
            self._limit = config.retransmit_limit(size)
        limit = self._limit
        if len(items) < max_items and budget > 8:
            # (a take may return its queue's own list: items is never changed in place)
            if member_queue.queued:
                taken = member_queue.take(budget, limit, max_items - len(items))
                if taken:
                    budget -= sum(map(len, taken))
                    items = items + taken if items else taken
            if update_queue.queued and len(items) < max_items and budget > 8:
                taken = update_queue.take(budget, limit, max_items - len(items))
                if taken:
                    items = items + taken if items else taken
        count = len(items)
        effect = new_send_datagram(
            address,
            b"".join(
                [
                    self._prefix,
                    encoded,
                    bytes((0x90 | count,)) if count <= 15 else b"\xdc" + count.to_bytes(2, "big"),
                    *items,
                ]
            ),
            self._decoded(body, items, encoded) if self.keep_decoded else None,
        )
        self.effects.append(effect)
        return effect

    def _decoded(
        self, body: Message, items: Sequence[bytes], encoded: bytes | None
    ) -> Envelope | None:
        """What decoding the datagram of ``body`` and ``items`` gives (``keep_decoded``):
        the body itself where its type is ``DECODED_AS_BUILT`` (membership's), else its
        bytes decoded (a task record's frozensets, say, are equal decoded but need not
        iterate in the same order); the items decoded from their bytes (cached, see
        ``decode_items``). None where decoding would fail: the receiver then decodes the
        bytes and refuses them, as it would any."""
        try:
            if not getattr(body, "DECODED_AS_BUILT", False):
                body = decode_message(encode_body(body) if encoded is None else encoded, "body")
            piggyback = decode_items(items) if items else ()
        except DecodeError:
            return None
        return new_envelope(self.node_id, self.incarnation, self.view, body, piggyback)

    def broadcast(self, key: Hashable, update: Message, membership: bool = False) -> None:
        """Queue ``update`` for piggybacking, replacing any queued update under ``key``.
        A membership update also wakes the gossip rounds; any other (a load) only rides
        on datagrams sent anyway (probes, acks, task messages, membership gossip)."""
        if membership:
            self.member_queue.enqueue(key, encode_shared_item(update))
            self.on_broadcast()
        else:
            self.update_queue.enqueue(key, encode_item(update))

    def has_pending_updates(self) -> bool:
        """Whether something waits that gossip rounds are sent for: membership updates.
        Loads are not: at 30 loopback daemons under load, rounds sent for them alone
        kept every node sending three datagrams every 100 ms, a third of its datagrams."""
        return bool(self.member_queue)

    def member_changed(self, info: MemberInfo, previous: MemberInfo | None) -> None:
        """Tell every component that this node's view of a member changed."""
        for listener in self.member_listeners:
            listener(info, previous)

    def members_joined(self, infos: list[MemberInfo]) -> None:
        """Tell every component that members new to this node joined, alive, in this
        order (a push-pull part's): ``member_changed(info, None)`` of each, one listener
        at a time (listeners keep their own state, so the order across listeners is
        free; within one listener it is the members')."""
        for listener in self.members_joined_listeners:
            listener(infos)


class Component:
    """Base class of node components: override what you need; defaults do nothing."""

    message_types: ClassVar[tuple[type[Message], ...]] = ()
    """Body types this component handles (each type has exactly one owner in a node)."""

    update_types: ClassVar[tuple[type[Message], ...]] = ()
    """Piggybacked update types this component handles."""

    def on_message(self, envelope: Envelope, message: Message, source: Address, now: float) -> None:
        """A datagram from a known member whose body is one of ``message_types``."""

    def on_update(self, envelope: Envelope, update: Message, source: Address, now: float) -> None:
        """A piggybacked update of one of ``update_types`` (sender is a known member)."""

    def on_event(self, event: object, now: float) -> bool:
        """A driver event; return True if this component consumed it."""
        return False

    def on_tick(self, now: float) -> None:
        """Timers may be due: do whatever is due at ``now``."""

    def next_deadline(self) -> float:
        """Absolute time this component next needs a Tick (+inf for never)."""
        return math.inf

    def deadline_source(self) -> Callable[[], float]:
        """What the node calls after every event for this component's deadline: the bound
        ``next_deadline`` unless a component has a cheaper callable giving the same value
        (the membership component hands over its timer set's own lookup)."""
        return self.next_deadline

    def on_member_changed(self, info: MemberInfo, previous: MemberInfo | None) -> None:
        """This node's view of a member changed (``previous`` is None for a new member)."""

    def on_members_joined(self, infos: list[MemberInfo]) -> None:
        """Members new to this node joined, alive, in this order (a push-pull part's):
        ``on_member_changed(info, None)`` of each unless a component has a cheaper way."""
        on_member_changed = self.on_member_changed
        for info in infos:
            on_member_changed(info, None)

    def anti_entropy_updates(self) -> list[Message]:
        """Updates describing this component's whole replicated state, sent with each
        push-pull exchange so a peer that missed gossip catches up (may be empty)."""
        return []
