"""The userspace netem stand-in (tests/netns/impairment.py) and the two-site lab built on it.

The decision model is checked without namespaces; the relay itself with a UDP echo
across it: every echo is at least the configured delay late, the frames that come back
are exactly the ones the relay did not drop, a cut drops everything and healing
restores, duplicates and overtaking show up, and the sites' router carries traffic
between the subnets through the WAN relay.
"""

from __future__ import annotations

import random
import select
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.netns.impairment import Impairment, LinkModel, PortForward, command
from tests.netns.lab import NamespacesUnavailable, NetnsLab, check_available, in_namespace
from tests.netns.sites import TwoSiteLab

ECHO_PORT = 47010


# --- the decision model ----------------------------------------------------------------


def model(rule: Impairment, seed: int = 5) -> LinkModel:
    link = LinkModel(random.Random(seed))
    link.rules["left_to_right"] = rule
    return link


def test_no_rule_forwards_each_frame_once_at_once() -> None:
    link = LinkModel(random.Random(1))
    assert [link.departures("left_to_right", 7.0) for _ in range(3)] == [[7.0]] * 3


def test_loss_rate_is_the_rule_within_binomial_tolerance() -> None:
    link = model(Impairment(loss=0.1))
    frames = 20_000
    dropped = sum(not link.departures("left_to_right", 0.0) for _ in range(frames))
    sigma = (frames * 0.1 * 0.9) ** 0.5
    assert abs(dropped - frames * 0.1) < 5 * sigma
    assert link.counters["left_to_right_lost"] == dropped
    assert link.departures("right_to_left", 0.0) == [0.0], "the other direction is untouched"


def test_delay_and_jitter_stay_within_bounds() -> None:
    link = model(Impairment(delay_s=0.04, jitter_s=0.01))
    times = [link.departures("left_to_right", 100.0)[0] - 100.0 for _ in range(2000)]
    assert min(times) >= 0.03 and max(times) <= 0.05
    assert max(times) - min(times) > 0.015, "jitter spreads the delays"


def test_cut_drops_everything_and_a_new_rule_heals() -> None:
    link = model(Impairment(cut=True, delay_s=0.01))
    assert all(link.departures("left_to_right", 0.0) == [] for _ in range(100))
    assert link.counters["left_to_right_cut"] == 100
    link.rules["left_to_right"] = Impairment()
    assert link.departures("left_to_right", 0.0) == [0.0]


def test_duplicate_sends_two_copies_and_reorder_skips_the_delay() -> None:
    link = model(Impairment(duplicate=1.0, delay_s=0.02))
    assert link.departures("left_to_right", 1.0) == [1.02, 1.02]
    link = model(Impairment(reorder=0.5, delay_s=0.02))
    times = [link.departures("left_to_right", 1.0)[0] for _ in range(1000)]
    assert 350 < times.count(1.0) < 650 and times.count(1.0) + times.count(1.02) == 1000


def test_same_seed_same_decisions() -> None:
    rule = Impairment(loss=0.3, duplicate=0.2, jitter_s=0.01, delay_s=0.02)
    first, second = model(rule, seed=9), model(rule, seed=9)
    runs = [
        [link.departures("left_to_right", float(i)) for i in range(500)] for link in (first, second)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != [
        model(rule, seed=10).departures("left_to_right", float(i)) for i in range(500)
    ]


def test_bad_rules_and_commands_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="loss is a probability"):
        Impairment(loss=1.5)
    with pytest.raises(ValueError, match="negative"):
        Impairment(delay_s=-1)
    link = LinkModel(random.Random(0))
    assert "unknown impairment fields" in command(link, '{"set": {"latency": 3}}')["error"]
    assert "direction" in command(link, '{"set": {}, "direction": "up"}')["error"]
    assert command(link, "not json")["ok"] is False
    assert command(link, '{"set": {"loss": 0.5}, "direction": "right_to_left"}') == {"ok": True}
    assert link.rules["right_to_left"].loss == 0.5 and link.rules["left_to_right"].loss == 0.0


def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def frame(protocol: int, source: str, destination: str, ports: tuple[int, int]) -> bytes:
    """An Ethernet + IPv4 + UDP/TCP frame with correct checksums and a payload."""
    payload = b"gossip and frames"
    addresses = socket.inet_aton(source) + socket.inet_aton(destination)
    if protocol == 17:
        transport = struct.pack("!HHHH", *ports, 8 + len(payload), 0) + payload
        at = 6
    else:
        transport = struct.pack("!HHIIBBHHH", *ports, 1, 0, 5 << 4, 0x18, 1024, 0, 0) + payload
        at = 16
    pseudo = addresses + struct.pack("!BBH", 0, protocol, len(transport))
    checksum = ~ones_complement_sum(pseudo + transport) & 0xFFFF
    transport = transport[:at] + struct.pack("!H", checksum) + transport[at + 2 :]
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(transport), 1, 0, 64, protocol, 0)
    ip += addresses
    ip = ip[:10] + struct.pack("!H", ~ones_complement_sum(ip) & 0xFFFF) + ip[12:]
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + transport


def transport_checksum_ok(data: bytes) -> bool:
    ip = data[14:34]
    transport = data[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, ip[9], len(transport))
    return ones_complement_sum(pseudo + transport) == 0xFFFF


def ports_of(data: bytes) -> tuple[int, int]:
    return struct.unpack_from("!HH", data, 34)  # type: ignore[return-value]


@pytest.mark.parametrize("protocol", [17, 6])
def test_a_port_forward_rewrites_ports_both_ways_with_valid_checksums(protocol: int) -> None:
    forward = PortForward("10.0.0.5", outside_port=17946, inside_port=7946)
    inbound = frame(protocol, "10.0.1.9", "10.0.0.5", (40000, 17946))
    rewritten = forward.rewrite("right_to_left", inbound)
    assert rewritten is not None and ports_of(rewritten) == (40000, 7946)
    assert transport_checksum_ok(inbound) and transport_checksum_ok(rewritten)
    outbound = frame(protocol, "10.0.0.5", "10.0.1.9", (7946, 40000))
    rewritten = forward.rewrite("left_to_right", outbound)
    assert rewritten is not None and ports_of(rewritten) == (17946, 40000)
    assert transport_checksum_ok(rewritten)


def test_a_port_forward_closes_the_inside_port_and_leaves_the_rest_alone() -> None:
    forward = PortForward("10.0.0.5", outside_port=17946, inside_port=7946)
    assert forward.rewrite("right_to_left", frame(17, "10.0.1.9", "10.0.0.5", (1, 7946))) is None
    other = frame(17, "10.0.1.9", "10.0.0.5", (1, 5353))
    assert forward.rewrite("right_to_left", other) == other
    ephemeral = frame(6, "10.0.0.5", "10.0.1.9", (51000, 7946))
    assert forward.rewrite("left_to_right", ephemeral) == ephemeral
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + bytes(28)
    assert forward.rewrite("right_to_left", arp) == arp


# --- the relay on real interfaces -------------------------------------------------------


def need_namespaces() -> None:
    try:
        check_available()
    except NamespacesUnavailable as reason:
        pytest.skip(f"network namespaces unavailable: {reason}")


class Echo:
    """A UDP echo server in one namespace and a client in another."""

    def __init__(self, server_namespace: str, client_namespace: str, address: str) -> None:
        def bind() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("", ECHO_PORT))
            return sock

        self.server = in_namespace(server_namespace, bind)
        self.client = in_namespace(
            client_namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        )
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.address = address
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.sequence = 0

    def _serve(self) -> None:
        while not self.stopped.is_set():
            ready, _, _ = select.select([self.server], [], [], 0.1)
            if ready:
                data, peer = self.server.recvfrom(2048)
                self.server.sendto(data, peer)

    def exchange(self, count: int, quiet_s: float = 1.0) -> list[tuple[int, float]]:
        """Send ``count`` numbered datagrams (1 ms apart); return (number, round trip) of
        every echo that came back, in arrival order, once none came for ``quiet_s``."""
        sent: dict[int, float] = {}
        for _ in range(count):
            self.sequence += 1
            sent[self.sequence] = time.monotonic()
            self.client.sendto(struct.pack("!I", self.sequence), (self.address, ECHO_PORT))
            time.sleep(0.001)
        echoes = []
        while True:
            ready, _, _ = select.select([self.client], [], [], quiet_s)
            if not ready:
                return echoes
            data = self.client.recv(64)
            (number,) = struct.unpack("!I", data)
            echoes.append((number, time.monotonic() - sent[number]))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.server.close()
        self.client.close()


@pytest.fixture(scope="module")
def impaired_lab() -> Iterator[tuple[NetnsLab, Echo]]:
    need_namespaces()
    lab = NetnsLab.create(2)
    echo = Echo(lab.hosts[1].namespace, lab.hosts[0].namespace, lab.hosts[1].address)
    try:
        yield lab, echo
    finally:
        echo.close()
        lab.close()
    assert not lab.leftovers()


@pytest.mark.netns
def test_every_echo_is_at_least_twice_the_delay_late(impaired_lab: tuple[NetnsLab, Echo]) -> None:
    lab, echo = impaired_lab
    lab.impair(1, Impairment(delay_s=0.04))
    echoes = echo.exchange(50)
    assert len(echoes) == 50
    trips = [trip for _, trip in echoes]
    print(f"round trips through 40 ms each way: min {min(trips):.4f} s, "
          f"median {statistics.median(trips):.4f} s")  # fmt: skip
    assert min(trips) >= 0.080, "a frame left the relay before its delay"
    assert statistics.median(trips) < 1.0, "the delay is applied once per direction, not more"


@pytest.mark.netns
def test_the_echoes_missing_are_exactly_the_frames_the_relay_lost(
    impaired_lab: tuple[NetnsLab, Echo],
) -> None:
    lab, echo = impaired_lab
    relay = lab.impair(1, Impairment(loss=0.2), direction="left_to_right")
    before = relay.counters().get("left_to_right_lost", 0)
    echoes = echo.exchange(500)
    lost = relay.counters()["left_to_right_lost"] - before
    # The host's other frames (ARP, IPv6 neighbour discovery) take their chances too.
    assert 500 - len(echoes) <= lost <= 500 - len(echoes) + 5
    sigma = (500 * 0.2 * 0.8) ** 0.5
    assert abs(lost - 100) < 5 * sigma, f"lost {lost} of 500 at 20 %"
    lab.impair(1, Impairment())


@pytest.mark.netns
def test_a_cut_drops_everything_and_heal_restores(impaired_lab: tuple[NetnsLab, Echo]) -> None:
    lab, echo = impaired_lab
    relay = lab.impair(1, Impairment(cut=True))
    assert echo.exchange(30, quiet_s=0.5) == []
    relay.heal()
    assert len(echo.exchange(30)) == 30


@pytest.mark.netns
def test_duplicates_and_overtaking_show_up(impaired_lab: tuple[NetnsLab, Echo]) -> None:
    lab, echo = impaired_lab
    relay = lab.impair(1, Impairment(duplicate=0.3), direction="left_to_right")
    before = relay.counters().get("left_to_right_duplicated", 0)
    echoes = echo.exchange(200)
    duplicated = relay.counters()["left_to_right_duplicated"] - before
    assert len(echoes) - 200 <= duplicated <= len(echoes) - 200 + 5
    assert len(echoes) > 200
    lab.impair(1, Impairment(delay_s=0.03, reorder=0.5), direction="left_to_right")
    order = [number for number, _ in echo.exchange(200)]
    assert len(order) == len(set(order)) == 200 and order != sorted(order), (
        "some echoes overtook others"
    )
    lab.impair(1, Impairment())


@pytest.mark.netns
def test_unimpair_puts_the_port_back_on_its_bridge(impaired_lab: tuple[NetnsLab, Echo]) -> None:
    lab, echo = impaired_lab
    relay = lab.impair(1, Impairment(delay_s=0.05))
    lab.unimpair(1)
    assert relay.process.poll() is not None, "the relay process is gone"
    echoes = echo.exchange(20)
    assert len(echoes) == 20
    assert min(trip for _, trip in echoes) < 0.1, "the 50 ms each way are gone"


@pytest.mark.netns
def test_two_sites_talk_through_the_router_and_its_wan_relay() -> None:
    need_namespaces()
    lab = TwoSiteLab.create_sites((1, 1), wan=Impairment(delay_s=0.04))
    try:
        a, b = lab.hosts
        assert a.address.split(".")[:2] != b.address.split(".")[:2], "two subnets"
        echo = Echo(b.namespace, a.namespace, b.address)
        try:
            echoes = echo.exchange(20)
            assert len(echoes) == 20
            assert min(trip for _, trip in echoes) >= 0.080
            lab.partition([[1], [0]])
            assert echo.exchange(10, quiet_s=0.5) == []
            lab.heal()
            assert len(echo.exchange(20)) == 20
        finally:
            echo.close()
    finally:
        lab.close()
    assert not lab.leftovers()
