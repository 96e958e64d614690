"""A tiny deterministic driver for core tests (the real simulator lives in meshgpu.sim).

It keeps just enough of a network to test the core's protocol logic in isolation: fixed
latency, seeded loss, partitions as groups, crashes, and slow nodes (extra delay on every
datagram a node receives). Everything is driven by one seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import LeaderChanged, MemberChanged, SendDatagram
from meshgpu.core.events import DatagramReceived, PeerDiscovered, Tick
from meshgpu.core.node import Node
from meshgpu.core.types import Address, NodeId


@dataclass
class MeshHarness:
    """N nodes on a virtual network; ``run_until`` advances virtual time."""

    size: int
    config: MeshConfig = field(default_factory=MeshConfig)
    seed: int = 1
    latency: float = 0.002
    loss: float = 0.0
    bootstrap: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = 0.0
        self.nodes: dict[NodeId, Node] = {}
        self.by_address: dict[Address, NodeId] = {}
        self.crashed: set[NodeId] = set()
        self.slow: dict[NodeId, float] = {}
        self.groups: dict[NodeId, int] = {}
        self.queue: list[tuple[float, int, str, NodeId, object]] = []
        self.counter = 0
        self.log: list[tuple[float, NodeId, object]] = []
        self.sent = 0
        for index in range(self.size):
            self.add_node(f"n{index:03d}", incarnation=0)
        if self.bootstrap:
            first = next(iter(self.nodes.values()))
            for node_id, node in self.nodes.items():
                if node is not first:
                    self.deliver_event(node_id, PeerDiscovered(first.address, first.node_id))

    def add_node(self, node_id: NodeId, incarnation: int = 0) -> Node:
        address = ("10.0.0.1", 7000 + len(self.by_address))
        if node_id in self.nodes:
            address = self.nodes[node_id].address
        node = Node(
            node_id, address, self.config, random.Random(self.rng.random()), self.now, incarnation
        )
        self.nodes[node_id] = node
        self.by_address[address] = node_id
        self.crashed.discard(node_id)
        self._schedule_tick(node_id)
        return node

    def _push(self, when: float, kind: str, node_id: NodeId, payload: object) -> None:
        self.counter += 1
        heapq.heappush(self.queue, (when, self.counter, kind, node_id, payload))

    def _schedule_tick(self, node_id: NodeId) -> None:
        deadline = self.nodes[node_id].next_deadline()
        if deadline != float("inf"):
            self._push(max(deadline, self.now), "tick", node_id, deadline)

    def deliver_event(self, node_id: NodeId, event: object) -> None:
        self._execute(node_id, self.nodes[node_id].handle(event, self.now))

    def _execute(self, node_id: NodeId, effects: Iterable[object]) -> None:
        for effect in effects:
            self.log.append((self.now, node_id, effect))
            if isinstance(effect, SendDatagram):
                self.sent += 1
                target = self.by_address.get(effect.destination)
                if target is None or target in self.crashed or node_id in self.crashed:
                    continue
                if self.groups.get(node_id, 0) != self.groups.get(target, 0):
                    continue
                if self.loss and self.rng.random() < self.loss:
                    continue
                delay = self.latency + self.slow.get(target, 0.0)
                event = DatagramReceived(self.nodes[node_id].address, effect.payload)
                self._push(self.now + delay, "datagram", target, event)
        self._schedule_tick(node_id)

    def run_until(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            when, _, kind, node_id, payload = heapq.heappop(self.queue)
            if node_id in self.crashed:
                continue
            node = self.nodes[node_id]
            self.now = when
            if kind == "tick":
                if payload != node.next_deadline() or when < node.next_deadline():
                    continue
                self._execute(node_id, node.handle(Tick(), when))
            else:
                self._execute(node_id, node.handle(payload, when))
        self.now = until

    def crash(self, node_id: NodeId) -> None:
        self.crashed.add(node_id)

    def live(self) -> list[NodeId]:
        return sorted(n for n in self.nodes if n not in self.crashed)

    def views_agree(self) -> bool:
        views = {tuple(self.nodes[n].live_members()) for n in self.live()}
        return len(views) == 1 and views.pop() == tuple(self.live())

    def member_changes(self, state: str) -> list[tuple[float, NodeId, MemberChanged]]:
        return [
            (t, n, e)
            for t, n, e in self.log
            if isinstance(e, MemberChanged) and e.state.value == state
        ]

    def leader_changes(self) -> list[tuple[float, NodeId, LeaderChanged]]:
        return [(t, n, e) for t, n, e in self.log if isinstance(e, LeaderChanged)]
