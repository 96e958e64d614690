"""The gossip socket on its own: two sockets on loopback, fakes for the node driver and
the daemon's counters (no node, no daemon). Floods come from 127.0.0.2, an address apart
from the peers'."""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Callable

import trio

from meshgpu.core.events import DatagramReceived
from meshgpu.daemon.auth import Authenticator, MeshKey
from meshgpu.daemon.auth.handshake import MAGIC
from meshgpu.daemon.datagrams import UNREADABLE_BUDGET, GossipSocket, bind_sockets
from meshgpu.daemon.identity import DuplicateIdentityGuard


class Side:
    """One gossip socket and what reached its callables."""

    def __init__(self, socket: GossipSocket) -> None:
        self.socket = socket
        self.fed: list[DatagramReceived] = []
        self.counted: Counter[str] = Counter()
        self.rejected = 0
        self.twins: list[tuple[str, int]] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.udp.getsockname()[:2]
        return (host, port)


async def open_side(node_id: str, key: MeshKey | None, started_ago: float = 0.0) -> Side:
    raw, udp, listeners = await bind_sockets("127.0.0.1", 0)
    for listener in listeners:
        await listener.aclose()
    side: Side

    def rejected() -> None:
        side.rejected += 1

    socket = GossipSocket(
        raw,
        udp,
        Authenticator(key, node_id),
        DuplicateIdentityGuard(node_id, trio.current_time() - started_ago, grace=15.0),
        feed=lambda event: side.fed.append(event),
        count=lambda name: side.counted.update([name]),
        rejected=rejected,
        twin_found=lambda address: side.twins.append(address),
    )
    side = Side(socket)
    return side


async def readable(side: Side) -> None:
    """Wait until datagrams sent to ``side`` are in its socket (fails loudly after 2 s)."""
    with trio.fail_after(2):
        await trio.lowlevel.wait_readable(side.socket.raw)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition that a socket task makes true (fails loudly after 2 s)."""
    with trio.fail_after(2):
        while not condition():
            await trio.sleep(0.001)
    assert condition(), what


async def test_a_sealed_datagram_arrives_opened_and_is_fed() -> None:
    key = MeshKey.generate()
    alice, bob = await open_side("alice", key), await open_side("bob", key)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob.socket.receive)
        await alice.socket.send(bob.address, b"hello")
        await alice.socket.send(bob.address, b"again")
        await wait_for(lambda: len(bob.fed) == 2, "both datagrams fed")
        nursery.cancel_scope.cancel()
    assert [event.payload for event in bob.fed] == [b"hello", b"again"]
    assert bob.fed[0].source == alice.address
    assert alice.counted["datagrams_sent"] == 2
    assert bob.counted["datagrams_received"] == 2


async def test_a_datagram_under_another_key_is_dropped_counted_and_reported() -> None:
    alice = await open_side("alice", MeshKey.generate())
    bob = await open_side("bob", MeshKey.generate())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob.socket.receive)
        await alice.socket.send(bob.address, b"hello")
        await wait_for(lambda: bob.rejected == 1, "the datagram rejected")
        nursery.cancel_scope.cancel()
    assert bob.fed == []
    assert bob.counted["datagrams_rejected"] == 1


async def test_take_queued_drains_what_the_kernel_holds_in_order() -> None:
    alice, bob = await open_side("alice", None), await open_side("bob", None)
    for number in range(5):
        await alice.socket.send(bob.address, f"{number}".encode())
    await readable(bob)  # no receiver task runs
    bob.socket.take_queued()
    assert [event.payload for event in bob.fed] == [b"0", b"1", b"2", b"3", b"4"]
    bob.socket.take_queued()  # nothing more: returns at once
    assert len(bob.fed) == 5


async def test_our_own_datagrams_are_not_fed() -> None:
    me = await open_side("alice", None)
    await me.socket.send(me.address, b"to myself")
    await readable(me)
    me.socket.take_queued()
    assert me.fed == []
    assert me.counted["datagrams_from_self"] == 1


async def test_a_newcomer_that_hears_its_twin_reports_it_and_feeds_nothing() -> None:
    newcomer = await open_side("alice", None)
    twin = await open_side("alice", None)
    await twin.socket.send(newcomer.address, b"from the other alice")
    await readable(newcomer)
    newcomer.socket.take_queued()
    assert newcomer.fed == []
    assert newcomer.twins == [twin.address]


async def test_the_original_counts_a_twin_and_keeps_serving() -> None:
    original = await open_side("alice", None, started_ago=100.0)
    twin = await open_side("alice", None)
    other = await open_side("bob", None)
    await twin.socket.send(original.address, b"from the other alice")
    await other.socket.send(original.address, b"from bob")
    await readable(original)
    original.socket.take_queued()
    assert [event.payload for event in original.fed] == [b"from bob"]
    assert original.counted["duplicate_identity"] == 1
    assert original.twins == []


def flood_socket() -> socket.socket:
    """A UDP socket on 127.0.0.2 (Linux routes all of 127/8 to loopback): a source
    address apart from the peers'."""
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    return flood


async def test_a_flood_of_garbage_from_one_address_is_dropped_unread_past_its_budget() -> None:
    key = MeshKey.generate()
    alice, bob = await open_side("alice", key), await open_side("bob", key)
    sent = 400
    rng = random.Random(7)
    began = trio.current_time()
    with flood_socket() as flood:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bob.socket.receive)
            for index in range(sent):
                # the magic first: past the kernel's filter, garbage all the same
                flood.sendto(MAGIC + rng.randbytes(rng.randrange(4, 200)), bob.address)
                if index % 100 == 50:  # a peer speaks in the middle of the flood
                    await alice.socket.send(bob.address, f"peer {index}".encode())
                if index % 20 == 0:
                    await trio.sleep(0)  # the receiver keeps up (nothing lost in the kernel)
            await wait_for(
                lambda: (
                    bob.counted["datagrams_rejected"] + bob.counted["datagrams_dropped_early"]
                    == sent
                ),
                "every garbage datagram rejected or dropped",
            )
            await wait_for(lambda: len(bob.fed) == 4, "the peer's datagrams fed")
            nursery.cancel_scope.cancel()
    assert [event.payload for event in bob.fed] == [
        b"peer 50",
        b"peer 150",
        b"peer 250",
        b"peer 350",
    ]
    windows = int(trio.current_time() - began) + 2  # the budget's seconds it spanned, at most
    assert bob.counted["datagrams_rejected"] <= UNREADABLE_BUDGET * windows
    assert bob.counted["datagrams_dropped_early"] >= sent - UNREADABLE_BUDGET * windows


async def test_garbage_that_forges_a_peers_address_never_cuts_the_peer_off() -> None:
    key = MeshKey.generate()
    alice, bob = await open_side("alice", key), await open_side("bob", key)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob.socket.receive)
        await alice.socket.send(bob.address, b"first")
        await wait_for(lambda: len(bob.fed) == 1, "the peer's first datagram fed")
        for index in range(200):  # from the peer's own address and port
            alice.socket.raw.sendto(MAGIC + b" garbage %d" % index, bob.address)
            if index % 20 == 0:
                await trio.sleep(0)
        await alice.socket.send(bob.address, b"second")
        await wait_for(lambda: len(bob.fed) == 2, "the peer's second datagram fed")
        nursery.cancel_scope.cancel()
    assert bob.counted["datagrams_rejected"] == 200
    assert bob.counted["datagrams_dropped_early"] == 0


async def test_datagrams_that_cannot_be_envelopes_are_dropped_in_the_kernel_and_counted() -> None:
    key = MeshKey.generate()
    alice, bob = await open_side("alice", key), await open_side("bob", key)
    assert bob.socket.filtered
    rng = random.Random(11)
    junk = [b"", b"M", b"MG", b"MG\x01", b"GM" + bytes(10)]
    junk += [rng.randbytes(rng.randrange(4, 1400)) for _ in range(300)]
    junk = [data for data in junk if not data.startswith(MAGIC) or len(data) < 6]
    counters: dict[str, int] = {}
    bob.socket.refresh_counters(counters)
    before = counters["datagrams_dropped_in_kernel"]
    with flood_socket() as flood:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bob.socket.receive)
            for index, data in enumerate(junk):
                flood.sendto(data, bob.address)
                if index % 100 == 50:
                    await alice.socket.send(bob.address, f"peer {index}".encode())
            await wait_for(lambda: len(bob.fed) == 3, "the peer's datagrams fed")
            nursery.cancel_scope.cancel()
    assert [event.payload for event in bob.fed] == [b"peer 50", b"peer 150", b"peer 250"]
    assert bob.counted["datagrams_received"] == 3  # the junk never woke the receiver
    assert bob.rejected == 0
    bob.socket.refresh_counters(counters)
    assert counters["datagrams_dropped_in_kernel"] - before == len(junk)
