"""Discovery: seed parsing, and real mDNS between in-process zeroconf instances."""

from __future__ import annotations

import pytest
import trio

from meshgpu.daemon.discovery import (
    MdnsDiscovery,
    Sighting,
    interface_address,
    local_ipv4_addresses,
    parse_peer,
    resolve_peer,
)
from meshgpu.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:7000", ("10.0.0.5", 7000)),
        ("gpu-box", ("gpu-box", 7946)),
        ("[fe80::1]:7001", ("fe80::1", 7001)),
    ],
)
def test_parse_peer(text: str, expected: tuple[str, int]) -> None:
    assert parse_peer(text) == expected


@pytest.mark.parametrize("text", ["host:notaport", ":7000", "host:70000"])
def test_bad_peer_says_the_expected_form(text: str) -> None:
    with pytest.raises(ConfigError, match=r"must look like HOST:PORT|is not a number"):
        parse_peer(text)


async def test_resolve_peer_gives_ipv4() -> None:
    assert await resolve_peer("localhost", 7000) == ("127.0.0.1", 7000)


def test_unknown_interface_lists_the_real_ones() -> None:
    with pytest.raises(ConfigError, match="lo"):
        interface_address("no-such-if0")
    assert interface_address("lo") == "127.0.0.1"


@pytest.mark.slow
async def test_mdns_finds_same_mesh_only_and_shuts_down_cleanly() -> None:
    address = local_ipv4_addresses()[0]
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 interface for multicast")
    seen: dict[str, list[Sighting]] = {"n-alpha": [], "n-beta": []}
    both_seen = trio.Event()

    def deliver_to(node: str):  # type: ignore[no-untyped-def]
        def deliver(sighting: Sighting) -> None:
            seen[node].append(sighting)
            if all(seen.values()):
                both_seen.set()

        return deliver

    nodes = [
        MdnsDiscovery("lab", "n-alpha", 7101, [address], interface=address),
        MdnsDiscovery("lab", "n-beta", 7102, [address], interface=address),
    ]
    stranger = MdnsDiscovery("other-lab", "n-gamma", 7103, [address], interface=address)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(stranger.run, lambda s: None)
            for node in nodes:
                await nursery.start(node.run, deliver_to(node.node_id))
            await both_seen.wait()
            nursery.cancel_scope.cancel()
    assert {s.node_id for s in seen["n-alpha"]} == {"n-beta"}
    assert seen["n-alpha"][0].address == (address, 7102)
    assert {s.node_id for s in seen["n-beta"]} == {"n-alpha"}
    assert all(node._zeroconf is None for node in [*nodes, stranger])


class FakeInfo:
    def __init__(self, properties: dict[bytes, bytes], port: int = 7000) -> None:
        self.properties = properties
        self.port = port

    def parsed_addresses(self, version: object) -> list[str]:
        return ["10.0.0.9"]


def test_only_same_mesh_services_become_sightings() -> None:
    discovery = MdnsDiscovery("lab", "n-self", 7000, ["10.0.0.1"])
    same = FakeInfo({b"mesh": b"lab", b"id": b"n-peer"})
    assert discovery._sighting(same, None) == Sighting("n-peer", ("10.0.0.9", 7000))
    assert discovery._sighting(FakeInfo({b"mesh": b"other", b"id": b"n-x"}), None) is None
    assert discovery._sighting(FakeInfo({b"mesh": b"lab", b"id": b"n-self"}), None) is None
    assert discovery._sighting(FakeInfo({b"mesh": b"lab"}), None) is None
    assert discovery._sighting(None, None) is None
    assert discovery.counters == {"other_mesh": 1, "incomplete": 1, "unresolved": 1}
