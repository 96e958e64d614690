"""One mesh node, sans-IO: ``effects = node.handle(event, now)``.

A :class:`Node` composes components (see :mod:`meshgpu.core.component`):

* :class:`~meshgpu.core.membership.Swim`: membership table, SWIM probing with Lifeguard,
  gossip rounds, push-pull anti-entropy, reconnection after partitions;
* :class:`~meshgpu.core.load.LoadGossip`: versioned load vectors;
* :class:`~meshgpu.core.leader.Leadership`: the view and its leader.

Handling a datagram: decode (anything malformed is counted in ``datagrams_rejected`` and
changes nothing); drop it if the sender is this node or unknown (``datagrams_unknown_
sender``), except a ``Ping`` (answered statelessly, so a member that heard of us before
we heard of it is not suspected) and a ``PushPull`` (how a new node joins); read the
header (incarnation, view); apply the piggybacked updates *first* (so an ack to a ping
that carried a suspicion of us already carries our refutation); then the body.

Adding a component (how the task queue plugs in)::

    class TaskQueue(Component):
        message_types = (TaskOffer, ...)       # bodies it owns (register_message'd)
        update_types = (TaskEntryUpdate, ...)  # piggybacked updates it owns
        def on_message(self, envelope, message, source, now): ...
        def on_update(self, envelope, update, source, now): ...
        def on_event(self, event, now) -> bool: ...      # its own driver events
        def on_tick(self, now): ...; def next_deadline(self): ...
        def on_member_changed(self, info, previous): ...
        def anti_entropy_updates(self): ...   # full state, sent with push-pull

    node.add_component(TaskQueue(node.context, ...))

A component sends with ``context.send(address, body)``, gossips with
``context.broadcast(key, update)``, emits effects with ``context.emit(effect)``, reads
``node.leader()``/``node.live_members()``/``node.loads()`` through the node it was given.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import assert_never

from meshgpu.core.catalog import Catalog, CatalogEntry
from meshgpu.core.component import Component, NodeContext
from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import Effect, LeaderChanged, new_member_changed
from meshgpu.core.events import (
    CatalogChange,
    CatalogRestored,
    DatagramReceived,
    Event,
    JournalReplayed,
    LeaveRequested,
    LoadChanged,
    PayloadFetchFailed,
    PayloadStored,
    PeerDiscovered,
    ResultCollected,
    ResultRequested,
    SubmitTask,
    TaskFinished,
    TaskStarted,
    Tick,
)
from meshgpu.core.leader import Leadership
from meshgpu.core.load import LoadGossip, LoadVector
from meshgpu.core.membership import ALIVE, MemberInfo, Swim
from meshgpu.core.membership.wire import Alive, Ping, PushPull
from meshgpu.core.messages import MAX_DATAGRAM_BYTES, MAX_PIGGYBACK_ITEMS, Message, decode
from meshgpu.core.tasks.component import NodeMeshView, TaskComponent
from meshgpu.core.types import Address, NodeId
from meshgpu.errors import DecodeError


class Node:
    """A mesh node's whole protocol state, driven by events and time passed in."""

    def __init__(
        self,
        node_id: NodeId,
        address: Address,
        config: MeshConfig,
        rng: random.Random,
        now: float,
        incarnation: int = 0,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.config = config
        self.context = NodeContext(node_id, address, config, rng)
        self.context.now = now
        self.context.incarnation = incarnation
        self.counters = self.context.counters
        self.swim = Swim(self.context, now)
        self.table = self.swim.table
        self.load_gossip = LoadGossip(self.context, self.table.members)
        self.leadership = Leadership(self.context, self.table, now)
        self.components: list[Component] = []
        self._timed: list[Component] = []
        self._deadline_sources: list[Callable[[], float]] = []
        """The bound ``next_deadline`` of every timed component (asked after each event)."""
        self._timed_sources: list[tuple[Component, Callable[[], float]]] = []
        """``_timed`` and ``_deadline_sources`` paired, for the tick loop."""
        self._deadline = math.inf
        self._message_owner: dict[type[Message], Component] = {}
        self._update_owner: dict[type[Message], Component] = {}
        self.context.member_listeners.append(self._member_changed)
        self.context.members_joined_listeners.append(self._members_joined)
        for component in (self.swim, self.load_gossip, self.leadership):
            self.add_component(component)
        self.tasks = TaskComponent(self.context, NodeMeshView(self), config.tasks, now)
        self.add_component(self.tasks)
        self.model_catalog = Catalog(self.context)
        self.add_component(self.model_catalog)
        self._announced: tuple[int, NodeId | None] | None = None

    def add_component(self, component: Component) -> None:
        """Plug in a component: it owns its message and update types, gets ticks, hears of
        membership changes and contributes to anti-entropy."""
        for cls in component.message_types:
            if cls in self._message_owner:
                raise ValueError(f"{cls.__name__} is already handled by another component")
            self._message_owner[cls] = component
        for cls in component.update_types:
            if cls in self._update_owner:
                raise ValueError(f"{cls.__name__} is already handled by another component")
            self._update_owner[cls] = component
        self.components.append(component)
        if type(component).next_deadline is not Component.next_deadline:
            # Only components with timers are asked for deadlines (once per event).
            self._timed.append(component)
            self._deadline_sources.append(component.deadline_source())
            self._timed_sources.append((component, self._deadline_sources[-1]))
        self._deadline = self._compute_deadline()
        if component is not self.swim:
            if type(component).on_member_changed is not Component.on_member_changed:
                # (the default does nothing: not called for each member change)
                self.context.member_listeners.append(component.on_member_changed)
                self.context.members_joined_listeners.append(component.on_members_joined)
            self.swim.anti_entropy_source.append(component)

    # --- the contract ------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        """This node's incarnation (only ever grows; bumped to refute suspicions)."""
        return self.context.incarnation

    @property
    def view(self) -> int:
        """The leader view this node is in."""
        return self.leadership.view

    def leader(self) -> NodeId | None:
        """Who this node believes leads its current view."""
        return self.leadership.leader

    def members(self) -> dict[NodeId, MemberInfo]:
        """Every member this node knows or remembers, itself included."""
        return dict(self.table.members)

    def live_members(self) -> list[NodeId]:
        """Alive and suspect members, sorted, this node included (unless it left)."""
        return self.table.sorted_live()

    def loads(self) -> dict[NodeId, LoadVector]:
        """The newest load vector of every live member, this node's included."""
        return self.load_gossip.loads()

    def catalog(self) -> dict[str, CatalogEntry]:
        """The model catalog as this node holds it: name -> digest and version."""
        return self.model_catalog.entries()

    def next_deadline(self) -> float:
        """Absolute time at which the driver must deliver the next :class:`Tick`.

        Cached: components' deadlines change only inside ``handle`` (and
        ``add_component``), which recompute it, so drivers may call this freely."""
        return self._deadline

    def _compute_deadline(self) -> float:
        deadline = math.inf
        for source in self._deadline_sources:
            candidate = source()
            if candidate < deadline:
                deadline = candidate
        return deadline

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Process one event at time ``now``; return the effects, in order. Never raises
        on bad input: a malformed datagram is counted and changes nothing. (An object
        outside the :data:`~meshgpu.core.events.Event` union is a driver bug: it fails
        the ``assert_never``.)"""
        context = self.context
        context.now = now
        context.effects = []
        match event:
            case DatagramReceived():  # nearly every event, so first
                self._on_datagram(event, now)
            case Tick():
                for component, deadline_of in self._timed_sources:
                    if deadline_of() <= now:
                        component.on_tick(now)
            case PeerDiscovered():
                self.swim.discover(event.address, event.node_id, now)
            case LoadChanged():
                self.tasks.on_driver_load(event.load, now)  # adds the task fields, gossips
            case LeaveRequested():
                self.swim.leave(now)
            case CatalogChange():
                self.model_catalog.change(event.name, event.digest, event.batching)
            case CatalogRestored():
                self.model_catalog.restore(event.updates)
            case (
                SubmitTask()
                | PayloadStored()
                | PayloadFetchFailed()
                | TaskFinished()
                | TaskStarted()
                | ResultRequested()
                | ResultCollected()
                | JournalReplayed()
            ):
                for component in self.components:
                    if component.on_event(event, now):
                        break
                else:
                    context.count("events_ignored")
            case _:
                assert_never(event)
        leadership = self.leadership
        if leadership.unsettled:  # (settle returns at once otherwise; asked every event)
            leadership.settle(now)
        announced = self._announced
        if (
            announced is None
            or leadership.view != announced[0]
            or leadership.leader != announced[1]
        ):
            # (the tuple is built only when the view or leader moved: once per view)
            announced = (leadership.view, leadership.leader)
            if self._announced is None or announced[1] != self._announced[1]:
                context.count("leader_changes")
            self._announced = announced
            context.emit(LeaderChanged(announced[0], announced[1]))
        self._deadline = self._compute_deadline()
        effects = context.effects
        context.effects = []
        return effects

    # --- internals ---------------------------------------------------------------------------

    def _member_changed(self, info: MemberInfo, previous: MemberInfo | None) -> None:
        self.context.emit(
            new_member_changed(
                info.node_id, info.address, info.state, info.incarnation, info.reason
            )
        )

    def _members_joined(self, infos: list[MemberInfo]) -> None:
        emit = self.context.effects.append
        for info in infos:
            emit(
                new_member_changed(
                    info.node_id, info.address, info.state, info.incarnation, info.reason
                )
            )

    def _on_datagram(self, event: DatagramReceived, now: float) -> None:
        counters = self.counters
        try:  # (no dict.get call per datagram; the key exists after the first one)
            counters["datagrams_received"] += 1
        except KeyError:
            counters["datagrams_received"] = 1
        envelope = event.decoded
        try:
            if (
                envelope is None
                or len(event.payload) > MAX_DATAGRAM_BYTES
                or len(envelope.piggyback) > MAX_PIGGYBACK_ITEMS
            ):
                # (past decode's limits the sender's envelope is not taken: decode refuses)
                envelope = decode(event.payload)
        except DecodeError:
            counters["datagrams_rejected"] = counters.get("datagrams_rejected", 0) + 1
            return
        sender = envelope.sender
        body = envelope.body
        if sender == self.node_id:
            self.context.count("datagrams_rejected")
            self.context.count("datagrams_from_self")
            return
        owner = self._message_owner.get(type(body))
        if owner is None:
            self.context.count("datagrams_rejected")
            return
        info = self.table.members.get(sender)
        if info is None:
            if isinstance(body, Ping):
                self.context.count("datagrams_unknown_sender")
                self.swim.answer_unknown_ping(body, event.source, now)
                return
            if not (
                isinstance(body, PushPull)
                and body.part == 0
                and body.members
                and body.members[0].node_id == sender
                and body.members[0].state == "alive"
            ):
                self.context.count("datagrams_rejected")
                self.context.count("datagrams_unknown_sender")
                return
        elif envelope.incarnation > info.incarnation or info.state is not ALIVE:
            # (observe_sender has nothing to do for an alive member at an incarnation we
            # hold: nearly every datagram, so that case is not a call)
            self.swim.observe_sender(envelope, event.source, now)
        if envelope.view > self.leadership.view:
            self.leadership.observe_view(envelope.view, now)
        source = event.source
        piggyback = envelope.piggyback
        if piggyback:
            counters["updates_received"] = counters.get("updates_received", 0) + len(piggyback)
        update_owner = self._update_owner
        members = self.table.members
        me = self.node_id
        joins: dict[NodeId, Alive] = {}
        for update in piggyback:
            kind = type(update)
            if kind is Alive:
                # Swim.on_update's first test, without the two calls to reach it: an Alive
                # we hold already (at or below the incarnation we know) changes nothing.
                # Nearly every update of a forming mesh is one (each reaches every node
                # about lambda*log(n) times).
                alive: Alive = update  # type: ignore[assignment]
                node_id = alive.node_id
                info = members.get(node_id)
                if info is None:
                    if node_id != me and node_id not in joins:
                        # A member new to us: merged with the next ones in one pass
                        # (Swim.on_joins), before any other update is handled.
                        joins[node_id] = alive
                        continue
                elif alive.incarnation <= info.incarnation and node_id != me:
                    continue
            if joins:
                self.swim.on_joins(envelope, list(joins.values()), now)
                joins = {}
            handler = update_owner.get(kind)
            if handler is not None:
                handler.on_update(envelope, update, source, now)
        if joins:
            self.swim.on_joins(envelope, list(joins.values()), now)
        owner.on_message(envelope, body, source, now)
