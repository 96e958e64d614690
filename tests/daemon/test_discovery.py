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


@pytest.mark.slow
async def test_two_processes_with_one_node_id_both_register_and_see_a_twin() -> None:
    """No name probing: a copied id cannot clash on the mDNS name (the run token keeps
    instance names apart), and each side sees the other as a twin, not as a peer."""
    address = local_ipv4_addresses()[0]
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 interface for multicast")
    original = MdnsDiscovery(
        "lab-twin", "n-copied", 7111, [address], interface=address, started_ms=1000
    )
    copy = MdnsDiscovery(
        "lab-twin", "n-copied", 7112, [address], interface=address, started_ms=2000
    )
    assert original.instance != copy.instance
    seen: dict[int, list[Sighting]] = {7111: [], 7112: []}
    both_seen = trio.Event()

    def deliver_to(port: int):  # type: ignore[no-untyped-def]
        def deliver(sighting: Sighting) -> None:
            seen[port].append(sighting)
            if all(seen.values()):
                both_seen.set()

        return deliver

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(original.run, deliver_to(7111))
            await nursery.start(copy.run, deliver_to(7112))
            await both_seen.wait()
            nursery.cancel_scope.cancel()
    # Both agree that the later start is the copy.
    assert seen[7111][0] == Sighting("n-copied", (address, 7112), twin=True)
    assert seen[7112][0] == Sighting("n-copied", (address, 7111), twin=True, we_are_the_copy=True)
    assert original.counters["twins"] >= 1


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
    ours = {b"mesh": b"lab", b"id": b"n-self", b"run": discovery.run_token.encode()}
    assert discovery._sighting(FakeInfo(ours), None) is None
    assert discovery._sighting(FakeInfo({b"mesh": b"lab"}), None) is None
    assert discovery._sighting(None, None) is None
    assert discovery.counters == {"other_mesh": 1, "incomplete": 1, "unresolved": 1}


def test_a_service_with_our_id_and_another_run_is_a_twin_and_the_later_one_the_copy() -> None:
    discovery = MdnsDiscovery(
        "lab", "n-self", 7000, ["10.0.0.1"], run_token="bbbb", started_ms=5000
    )
    assert discovery.instance == "n-self-bbbb"

    def twin(run: bytes, since: bytes) -> FakeInfo:
        return FakeInfo({b"mesh": b"lab", b"id": b"n-self", b"run": run, b"since": since}, 7001)

    def copy_is_us(info: FakeInfo) -> bool:
        sighting = discovery._sighting(info, None)
        assert sighting is not None and sighting.twin
        assert sighting.address == ("10.0.0.9", 7001)
        return sighting.we_are_the_copy

    assert copy_is_us(twin(b"aaaa", b"4000"))  # it started first
    assert not copy_is_us(twin(b"aaaa", b"6000"))  # it started later
    assert copy_is_us(twin(b"aaaa", b"5000"))  # same start: the smaller run token wins
    assert not copy_is_us(twin(b"cccc", b"5000"))
    assert copy_is_us(twin(b"aaaa", b"garbage"))  # unreadable: we yield
    assert discovery.counters == {"twins": 5}


def test_a_seed_that_never_joins_is_reported_once_and_its_answer_noted(caplog) -> None:
    from meshgpu.daemon.peer_finding import SeedWatch

    watch = SeedWatch(silent_s=10.0)
    seed = ("10.0.0.9", 7946)
    assert not watch.offered(seed, member=False, now=100.0)
    assert not watch.offered(seed, member=False, now=108.0)
    with caplog.at_level("INFO", logger="meshgpu.daemon"):
        assert watch.offered(seed, member=False, now=110.0)
    message = caplog.records[-1].getMessage()
    assert "10.0.0.9:7946" in message and "10 s" in message
    assert not watch.offered(seed, member=False, now=130.0)  # said once
    assert not watch.offered(seed, member=True, now=131.0)  # it joined
    # gone again later: a new silence, a new report
    assert not watch.offered(seed, member=False, now=200.0)
    assert watch.offered(seed, member=False, now=211.0)


@pytest.mark.parametrize("stop", ["hangs", "fails"])
async def test_a_slow_or_failing_goodbye_holds_no_stop(
    stop: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """zeroconf's goodbye and close wait on its own loop (up to 10 s and more each on a
    loaded machine, then EventLoopBlocked): a stopping daemon, a refused one among them,
    waits ``STOP_TIMEOUT_S`` at most for them, and their error is logged, not raised in
    place of the error that stopped the daemon."""
    import threading

    from meshgpu.daemon import discovery as discovery_module

    release = threading.Event()

    def goodbye() -> None:
        if stop == "fails":
            raise RuntimeError("EventLoopBlocked")
        release.wait(5)

    discovery = MdnsDiscovery("m", "n", 7946, ["127.0.0.1"])
    monkeypatch.setattr(discovery, "_start", lambda token, sender: None)
    monkeypatch.setattr(discovery, "_stop", goodbye)
    monkeypatch.setattr(discovery_module, "STOP_TIMEOUT_S", 0.2)
    began = trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery.run, lambda sighting: None)
            nursery.cancel_scope.cancel()
    finally:
        release.set()
    assert trio.current_time() - began < 3
    if stop == "fails":
        assert "EventLoopBlocked" in caplog.text
