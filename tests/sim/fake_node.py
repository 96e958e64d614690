"""A deliberately simple heartbeat node for testing the simulator on its own.

It honours the Node contract the simulator relies on (handle / next_deadline / members
through MemberChanged effects / leader) with a protocol too simple to have subtle bugs:
every ``period`` it sends a heartbeat to every peer it knows; a peer not heard from for
``timeout`` is declared dead, and alive again when heard. So the simulator's network,
faults and checkers can be tested with outcomes we can predict.
"""

from __future__ import annotations

import random
from typing import Any

from meshgpu.core.effects import LeaderChanged, MemberChanged, SendDatagram
from meshgpu.core.events import DatagramReceived, PeerDiscovered, Tick
from meshgpu.core.membership import ALIVE, DEAD
from meshgpu.core.types import Address, NodeId


class HeartbeatNode:
    period = 0.2
    timeout = 1.0
    rotation = 5.0

    def __init__(
        self,
        node_id: NodeId,
        address: Address,
        rng: random.Random,
        now: float,
        incarnation: int = 0,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self._incarnation = incarnation + 1  # a (re)start bumps it, as a refutation would
        self.rng = rng
        self.peers: dict[NodeId, Address] = {}
        self.heard: dict[NodeId, float] = {}
        self.state: dict[NodeId, str] = {}
        self.incarnations: dict[NodeId, int] = {}
        self.next_beat = now + rng.random() * self.period
        self.now = now
        self.current_leader: NodeId | None = node_id
        self.counters: dict[str, int] = {"heartbeats": 0, "datagrams_rejected": 0}

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def view(self) -> int:
        return int(self.now // self.rotation)

    def live_members(self) -> list[NodeId]:
        return sorted([self.node_id, *(p for p, s in self.state.items() if s == "alive")])

    def leader(self) -> NodeId | None:
        live = self.live_members()
        return live[self.view % len(live)]

    def next_deadline(self) -> float:
        return self.next_beat

    def handle(self, event: Any, now: float) -> list[Any]:
        self.now = now
        effects: list[Any] = []
        if isinstance(event, PeerDiscovered) and event.node_id is not None:
            self._heard(event.node_id, event.address, now, effects)
        elif isinstance(event, DatagramReceived):
            try:
                tag, node_id, host, port, incarnation = event.payload.decode().split("|")
                assert tag == "hb"
            except (ValueError, AssertionError, UnicodeDecodeError):
                self.counters["datagrams_rejected"] += 1
                return effects
            self._heard(node_id, (host, int(port)), now, effects, int(incarnation))
        elif isinstance(event, Tick) and now >= self.next_beat:
            self.next_beat = now + self.period
            beat = f"hb|{self.node_id}|{self.address[0]}|{self.address[1]}|{self._incarnation}"
            for peer in sorted(self.peers):
                effects.append(SendDatagram(self.peers[peer], beat.encode()))
                self.counters["heartbeats"] += 1
            for peer in sorted(self.peers):
                if self.state[peer] == "alive" and now - self.heard[peer] > self.timeout:
                    self.state[peer] = "dead"
                    effects.append(
                        MemberChanged(
                            peer, self.peers[peer], DEAD, self.incarnations[peer], "timeout"
                        )
                    )
        leader = self.leader()
        if leader != self.current_leader:
            self.current_leader = leader
            effects.append(LeaderChanged(self.view, leader))
        return effects

    def _heard(
        self,
        node_id: NodeId,
        address: Address,
        now: float,
        effects: list[Any],
        incarnation: int = 0,
    ) -> None:
        if node_id == self.node_id:
            return
        self.peers[node_id] = address
        self.heard[node_id] = now
        incarnation = max(incarnation, self.incarnations.get(node_id, 0))
        self.incarnations[node_id] = incarnation
        if self.state.get(node_id) != "alive":
            self.state[node_id] = "alive"
            effects.append(MemberChanged(node_id, address, ALIVE, incarnation, "heard"))


def heartbeat_factory(
    node_id: NodeId, address: Address, rng: Any, now: float, incarnation: int
) -> HeartbeatNode:
    return HeartbeatNode(node_id, address, rng, now, incarnation)
