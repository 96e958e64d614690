"""The rotating leader: leadership by view number, computed, never elected.

Rule: the leader of view ``v`` is the live member (alive or suspect) with the highest
rendezvous score ``blake2b(f"{v}:{node_id}")``. Every node evaluates the same function, so
nodes that agree on the view and on the live set agree on the leader, without any vote.

How views advance (there are no synchronised clocks, so a view cannot be derived from
wall time):

* **Rotation.** The leader of view ``v`` bumps the view to ``v + 1`` once it has led for
  ``leader_rotation_interval`` seconds by its own clock, handing over to the next leader.
* **Suspicion.** Any node that sees the leader of its current view as suspect, dead or
  departed bumps the view at once (repeatedly if the next leader is also not alive).
* **Max wins.** Every datagram carries its sender's view; a node adopts any higher view it
  sees. Nodes that bump independently from the same view land on the same number.

Why rendezvous hashing and not "the (v mod n)-th live member by id": with ``v mod n``
every join or death of *any* member shifts the index and moves leadership; with
rendezvous scores only the leader's own departure changes the leader of a view (and a
join takes over only if the newcomer out-scores it, probability 1/n). Rotation still
spreads leadership uniformly over members. In a partition each side computes its own
leader (meshgpu is AP); after the heal the highest view and the union of members decide.
"""

from __future__ import annotations

import functools
import hashlib
import math

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.membership import ALIVE, LIVE_STATES, MemberInfo, MemberTable
from meshgpu.core.types import NodeId


@functools.lru_cache(maxsize=16384)
def leader_score(view: int, node_id: NodeId) -> int:
    """The rendezvous score of ``node_id`` in ``view`` (same on every node and platform).

    Memoised (a pure function): every node scores every member when its view moves
    (rotation every 30 s), so a process running many nodes (the simulator) would compute
    each score once per node."""
    digest = hashlib.blake2b(f"{view}:{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def leader_for_view(view: int, live: list[NodeId]) -> NodeId | None:
    """The leader of ``view`` among ``live`` members (None if there are none)."""
    if not live:
        return None
    return max(live, key=lambda node_id: (leader_score(view, node_id), node_id))


class Leadership(Component):
    """Tracks the view and its leader incrementally (O(1) per membership change, O(n) per
    view change)."""

    def __init__(self, context: NodeContext, table: MemberTable, now: float) -> None:
        self.context = context
        self.table = table
        self.view = 0
        self.view_since = now
        self.leader: NodeId | None = None
        self._leader_key: tuple[int, NodeId] | None = None
        self.unsettled = True
        """Set when membership or the view changed: ``settle`` has something to check."""
        self._recompute()

    def _recompute(self) -> None:
        self.unsettled = True
        best: tuple[int, NodeId] | None = None
        view = self.view
        for node_id in self.table.sorted_live():
            key = (leader_score(view, node_id), node_id)
            if best is None or key > best:
                best = key
        self._leader_key = best
        self.leader = None if best is None else best[1]

    def _set_view(self, view: int, now: float) -> None:
        self.view = view
        self.view_since = now
        self.context.view = view
        self.context.count("view_changes")
        self._recompute()

    def observe_view(self, view: int, now: float) -> None:
        """Max wins: adopt a higher view seen on a datagram."""
        if view > self.view:
            self._set_view(view, now)

    def on_member_changed(self, info: MemberInfo, previous: MemberInfo | None) -> None:
        node_id = info.node_id
        live = info.state in LIVE_STATES and not (
            node_id == self.context.node_id and self.table.leaving
        )
        was_live = previous is not None and previous.state in LIVE_STATES
        self.unsettled = True
        if live and not was_live:
            key = (leader_score(self.view, node_id), node_id)
            if self._leader_key is None or key > self._leader_key:
                self._leader_key = key
                self.leader = node_id
        elif not live and node_id == self.leader:
            self._recompute()

    def on_members_joined(self, infos: list[MemberInfo]) -> None:
        # on_member_changed(info, None) of each: a new alive member (never this node)
        # leads if its key is the highest yet.
        self.unsettled = True
        view = self.view
        for info in infos:
            node_id = info.node_id
            key = (leader_score(view, node_id), node_id)
            if self._leader_key is None or key > self._leader_key:
                self._leader_key = key
                self.leader = node_id

    def settle(self, now: float) -> None:
        """After any change: if our view's leader is not alive to us, move to the next view
        at once (bounded: we ourselves are always alive to us unless we left)."""
        if not self.unsettled:
            return
        members = self.table.members
        for _ in range(len(members) + 1):
            leader = self.leader
            info = None if leader is None else members.get(leader)
            if info is None or info.state is ALIVE:
                break
            self.context.count("leader_suspected")
            self._set_view(self.view + 1, now)
        self.unsettled = False

    def next_deadline(self) -> float:
        if self.leader == self.context.node_id and not self.table.leaving:
            return self.view_since + self.context.config.leader_rotation_interval
        return math.inf

    def on_tick(self, now: float) -> None:
        if self.leader == self.context.node_id and now >= self.next_deadline():
            self.context.count("rotations")
            self._set_view(self.view + 1, now)
