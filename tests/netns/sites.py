"""Two lab sites in two subnets, joined by a router whose WAN link runs through a relay.

Topology (names carry the lab's random suffix, as in :mod:`tests.netns.lab`)::

    site 0: 10.213.X.0/24                                 site 1: 10.214.X.0/24
    hosts h0..  eth0 --- br0 --- r0 == eth0 [router ns "rt"] eth1 == r1 ~relay~ w1 --- br1 --- hosts
                         (switch ns)     10.213.X.1      10.214.X.1          (switch ns)

The router namespace forwards between the subnets with the kernel's IPv4 forwarding; each
host's default route points at its site's router address. The WAN link's impairment
(delay, loss, a cut) is applied by a :class:`~tests.netns.impairment.Relay` that sits in
the switch namespace between the router's site-1 veth (``r1``) and site 1's bridge (via the
veth pair ``w1``/``w1b``): every frame between the sites crosses it once, so a rule of
40 ms each way is a round trip of 80 ms plus the LAN's. Multicast stays within a site (the
router does not forward it): mDNS finds the peers of one's own site, seeds the others.

``partition`` and ``heal`` keep the :class:`~tests.netns.lab.NetnsLab` contract for the
only partition this lab has, the sites' one: a cut of the WAN link, and back to its rule.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.netns.impairment import Impairment, Relay, disable_tx_offloads
from tests.netns.lab import Host, NetnsLab, _ip, in_namespace, sweep_stale

WAN = Impairment(delay_s=0.040, loss=0.01)
"""The default WAN link: 40 ms each way and 1 % loss each way."""


def subnet(site: int, third: int) -> str:
    return f"10.{213 + site}.{third}"


@dataclass
class TwoSiteLab(NetnsLab):
    """:class:`NetnsLab` whose hosts sit in two routed subnets; build with :meth:`create_sites`."""

    router: str = ""
    sites: list[list[int]] = field(default_factory=list)
    """Host indices of each site."""
    gateways: list[str] = field(default_factory=list)
    """The router's address in each site."""
    wan: Impairment = WAN
    relay: Relay | None = None

    @classmethod
    def create_sites(
        cls, sizes: Sequence[int] = (2, 2), wan: Impairment = WAN, seed: int = 0
    ) -> TwoSiteLab:
        """Build the two sites and start the WAN relay with ``wan`` both ways."""
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError("two sites of at least one host each")
        sweep_stale()
        suffix = f"{secrets.token_hex(3)}p{os.getpid()}"
        third = secrets.randbelow(250) + 1
        lab = cls(suffix=suffix, switch=f"mgn{suffix}sw", router=f"mgn{suffix}rt", wan=wan)
        try:
            lab._build(sizes, third, seed)
        except BaseException:
            lab.close()
            raise
        return lab

    def _build(self, sizes: Sequence[int], third: int, seed: int) -> None:
        sw = ("-n", self.switch)
        rt = ("-n", self.router)
        _ip("netns", "add", self.switch)
        _ip("netns", "add", self.router)
        for namespace in (self.switch, self.router):
            _ip("-n", namespace, "link", "set", "lo", "up")
        for site in range(2):
            bridge = f"br{site}"
            _ip(*sw, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
            _ip(*sw, "link", "set", bridge, "up")
            gateway = f"{subnet(site, third)}.1"
            self.gateways.append(gateway)
            _ip(*sw, "link", "add", f"r{site}", "type", "veth",
                "peer", "name", f"eth{site}", "netns", self.router)  # fmt: skip
            _ip(*rt, "addr", "add", f"{gateway}/24", "dev", f"eth{site}")
            _ip(*rt, "link", "set", f"eth{site}", "up")
            in_namespace(self.router, lambda name=f"eth{site}": disable_tx_offloads(name))
        _ip(*sw, "link", "set", "r0", "master", "br0", "up")
        _ip(*sw, "link", "set", "r1", "up")
        _ip(*sw, "link", "add", "w1", "type", "veth", "peer", "name", "w1b")
        _ip(*sw, "link", "set", "w1b", "master", "br1", "up")
        _ip(*sw, "link", "set", "w1", "up")
        in_namespace(self.router, _enable_forwarding)
        index = 0
        for site, size in enumerate(sizes):
            self.sites.append([])
            for position in range(size):
                address = f"{subnet(site, third)}.{10 + position}"
                host = Host(index, f"mgn{self.suffix}h{index}", address, f"v{index}")
                _ip("netns", "add", host.namespace)
                self.hosts.append(host)
                self.sites[site].append(index)
                _ip(*sw, "link", "add", host.port_name, "type", "veth",
                    "peer", "name", "eth0", "netns", host.namespace)  # fmt: skip
                _ip(*sw, "link", "set", host.port_name, "master", f"br{site}", "up")
                inside = ("-n", host.namespace)
                _ip(*inside, "link", "set", "lo", "up")
                _ip(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip(*inside, "link", "set", "eth0", "up")
                _ip(*inside, "route", "add", "default", "via", self.gateways[site])
                _ip(*inside, "route", "add", "224.0.0.0/4", "dev", "eth0")
                in_namespace(host.namespace, lambda: disable_tx_offloads("eth0"))
                index += 1
        self.relay = Relay.start(self.switch, "r1", "w1", seed=seed)
        self.relay.set(self.wan)

    def site_of(self, index: int) -> int:
        return next(site for site, members in enumerate(self.sites) if index in members)

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Cut the WAN link; ``groups`` must be the two sites (the only cut this lab makes)."""
        if sorted(map(sorted, groups)) != sorted(map(sorted, self.sites)):
            raise ValueError(f"this lab cuts between its sites only: {self.sites}")
        assert self.relay is not None
        self.relay.cut()
        self.partitioned = True

    def heal(self) -> None:
        """The WAN link back to its rule (delay and loss, no cut)."""
        assert self.relay is not None
        self.relay.heal(self.wan)
        self.partitioned = False

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        super().close()
        _ip("netns", "del", self.router, check=False)


def _enable_forwarding() -> None:
    """IPv4 forwarding in the calling thread's namespace (the sysctl is per namespace)."""
    with open("/proc/sys/net/ipv4/ip_forward", "w") as switch:
        switch.write("1\n")
