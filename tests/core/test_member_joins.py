"""Members new to a node, merged a push-pull part or a datagram at a time
(``MemberTable.add_members``), leave the node exactly as ``apply_alive`` of each in turn.

Two nodes built alike get the same datagrams; in one, ``add_members`` is replaced by a loop
of ``apply_alive`` (what a node did before joins were merged together). Everything the
merge touches must come out the same: the table, its live list and push-pull parts, the
probe order and the random draws that placed each member in it, the queued updates, the
counters, the effects and their order, the leader.
"""

from __future__ import annotations

import random
from typing import Any

from meshgpu.core.config import MeshConfig
from meshgpu.core.events import DatagramReceived
from meshgpu.core.membership.wire import Alive, Dead, Gossip, MemberRecord, PushPull, Suspect
from meshgpu.core.messages import Envelope, encode
from meshgpu.core.node import Node

ME = "n-0500"


def address(index: int) -> tuple[str, int]:
    return (f"10.0.{index // 250}.{index % 250 + 1}", 7946)


def build(one_at_a_time: bool) -> Node:
    node = Node(ME, address(500), MeshConfig(), random.Random(5), 0.0)
    table = node.table
    if one_at_a_time:

        def apply_each(joins: list[Alive], reason: str, now: float) -> None:
            for join in joins:
                table.apply_alive(join, now, reason)

        table.add_members = apply_each  # type: ignore[method-assign]
    # A few members known already, one of them suspect.
    for index in (1, 2, 3, 4):
        table.apply_alive(Alive(f"n-{index:04d}", address(index), 0), 0.0, "seed")
    table.apply_suspect(Suspect("n-0004", 0, "n-0002"), 0.0, "gossip")
    return node


def datagrams() -> list[Envelope]:
    """A gossip datagram and push-pull parts mixing joins of unknown members with news of
    known ones, a verdict, a record about the node itself and a repeated member."""
    rng = random.Random(3)
    envelopes: list[Envelope] = []
    piggyback: list[Any] = [
        Alive(f"n-{i:04d}", address(i), rng.randrange(3)) for i in range(10, 20)
    ]
    piggyback.insert(4, Suspect("n-0003", 0, "n-0001"))
    piggyback.insert(7, Alive("n-0002", address(2), 1))
    piggyback.append(Alive("n-0012", address(12), 5))  # a second join of one member
    piggyback.append(Dead("n-0011", 0, "n-0001"))
    envelopes.append(Envelope("n-0001", 0, 0, Gossip(), tuple(piggyback)))
    for part in range(3):
        records = [
            MemberRecord(f"n-{i:04d}", address(i), "alive", rng.randrange(2))
            for i in range(100 + 40 * part, 140 + 40 * part)
        ]
        records.insert(5, MemberRecord("n-0004", address(4), "alive", 2))
        records.insert(9, MemberRecord("n-0900", address(900), "dead", 0))  # unknown, dead
        records.insert(12, MemberRecord(ME, address(500), "alive", 0))
        records.insert(20, MemberRecord("n-0013", address(13), "suspect", 0))
        records.append(MemberRecord(records[0].node_id, records[0].address, "alive", 4))
        envelopes.append(Envelope("n-0002", 0, 0, PushPull(True, part + 1, 4, tuple(records))))
    return envelopes


def state(node: Node, effects: list[Any]) -> dict[str, Any]:
    table = node.table
    prober = node.swim.prober
    queue = node.context.member_queue
    return {
        "members": dict(table.members),
        "live": list(table.live),
        "live_index": dict(table._live_index),
        "parts": table.record_parts(),
        "sorted_live": table.sorted_live(),
        "version": table.version,
        "suspicions": sorted(table.suspicions),
        "probe_order": list(prober._probe_order),
        "in_round": set(prober._in_round),
        "rng": node.context.rng.getstate(),
        "queue": queue.buckets(),
        "queued": set(queue.queued),
        "counters": dict(node.counters),
        "counter_order": list(node.counters),
        "effects": effects,
        "leader": node.leader(),
        "cluster_size": node.context.cluster_size,
        "timers": sorted(node.swim.timers._deadlines.items(), key=repr),
        "deadline": node.next_deadline(),
    }


def test_joins_merged_together_leave_the_node_as_one_at_a_time() -> None:
    merged, each = build(False), build(True)
    for step, envelope in enumerate(datagrams()):
        now = 1.0 + step * 0.1
        event = DatagramReceived(address(1), encode(envelope))
        got = state(merged, merged.handle(event, now))
        want = state(each, each.handle(event, now))
        assert got == want, step
    assert len(merged.table.members) > 120
