"""The lab itself: it skips for the right reason, partitions really cut the LAN in two,
healing restores it, multicast crosses the bridge, and closing leaves nothing behind."""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator

import pytest

from tests.netns import lab as lab_module
from tests.netns.lab import NamespacesUnavailable, NetnsLab, check_available, in_namespace

MDNS_GROUP = "224.0.0.251"


def test_without_root_the_reason_is_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 1000)
    with pytest.raises(NamespacesUnavailable, match="root"):
        check_available()


def test_without_ip_the_reason_is_iproute2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab_module.shutil, "which", lambda name: None)
    with pytest.raises(NamespacesUnavailable, match="iproute2"):
        check_available()


@pytest.fixture(scope="module")
def small_lab() -> Iterator[NetnsLab]:
    try:
        check_available()
    except NamespacesUnavailable as reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    built = NetnsLab.create(3)
    try:
        yield built
    finally:
        built.close()
    assert not built.leftovers()


def receiver(namespace: str, group: str | None = None) -> socket.socket:
    """A UDP socket bound in ``namespace`` (joined to ``group`` if given), port 47000."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", 47000))
        if group is not None:
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        return sock

    return in_namespace(namespace, make)


def delivered(sender_namespace: str, destination: str, sock: socket.socket) -> bool:
    """Send one datagram from ``sender_namespace``; did ``sock`` get it within 1 s?"""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            out.sendto(b"hello", (destination, 47000))

    in_namespace(sender_namespace, send)
    ready, _, _ = select.select([sock], [], [], 1.0)
    if ready:
        sock.recv(64)
    return bool(ready)


@pytest.mark.netns
def test_partition_cuts_between_sides_only_and_heal_restores(small_lab: NetnsLab) -> None:
    a, b, c = small_lab.hosts
    at_a = receiver(a.namespace)
    try:
        assert delivered(b.namespace, a.address, at_a)
        small_lab.partition([[0, 1], [2]])
        assert delivered(b.namespace, a.address, at_a), "same side must still talk"
        assert not delivered(c.namespace, a.address, at_a), "the partition let a packet by"
        small_lab.heal()
        # A healed port may need an ARP round; one retry is a fresh packet, not a wait.
        assert delivered(c.namespace, a.address, at_a) or delivered(c.namespace, a.address, at_a)
    finally:
        at_a.close()


@pytest.mark.netns
def test_multicast_reaches_every_host(small_lab: NetnsLab) -> None:
    """mDNS's precondition: a datagram to the mDNS group crosses the bridge."""
    a, b, c = small_lab.hosts
    listeners = [receiver(host.namespace, MDNS_GROUP) for host in (b, c)]
    try:
        for sock in listeners:
            assert delivered(a.namespace, MDNS_GROUP, sock)
    finally:
        for sock in listeners:
            sock.close()
