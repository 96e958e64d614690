"""A small lab of Linux network namespaces on a bridge, for real-network daemon tests.

Topology (everything lives in namespaces this module creates; the root namespace, where
the CI machine's real network is, is never touched)::

    netns mgn<sfx>sw:  br0 (and br1 while partitioned), no addresses, snooping off
                         |  v0   |  v1   |  v2   | ...       (bridge ends of veth pairs)
    netns mgn<sfx>h0:  eth0 10.213.X.10/24, lo up, route 224.0.0.0/4 dev eth0
    netns mgn<sfx>h1:  eth0 10.213.X.11/24, ...
    (a "decoy" host also has docker0 172.31.X.1/24, a bridge listed *before* eth0, the
     container-bridge address a daemon must not advertise)

``<sfx>`` is random per lab, and so is the third octet ``X``, so two labs (two CI jobs
on one runner) never share a name or an address. :meth:`NetnsLab.close` kills what was
started in the lab and deletes its namespaces; the veths and bridges go with them. Should
the test process itself be killed (a CI timeout), its daemons die with it (parent-death
signal), and the next lab deletes namespaces left by a process that no longer exists
(their names carry the creator's pid).

Every host's ``eth0`` has transmit checksum offload off, so that its frames can cross a
relay (tests/netns/impairment.py, the userspace stand-in for ``tc netem``):
``impair(1, Impairment(loss=0.2))`` puts one between host 1's port and its bridge.

Partitions move bridge ports: ``partition([[0, 1], [2, 3]])`` puts hosts 2 and 3 on a
second bridge, so each side stays a connected LAN (mDNS included) and the sides cannot
reach each other; ``heal()`` puts every port back on ``br0``. Taking a link down would
isolate each host on its own instead, and the kernel here has no netem qdisc.

The test process talks to a host's daemon from *inside* that host's namespace:
:func:`in_namespace` runs a function on a fresh thread that first joins the namespace
with ``setns(2)`` (which moves only the calling thread), so every socket the function
opens is a socket of that host. The thread is never reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from tests.netns.impairment import Direction, Impairment, Relay, disable_tx_offloads

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
STALE = re.compile(r"^(mgn[0-9a-f]{6}p(\d+)(?:sw|rt|h\d+))\b")
NETNS_DIR = "/var/run/netns"
SUBNET_PREFIX = "10.213"


class NamespacesUnavailable(Exception):
    """This machine cannot build the lab (not root, no `ip`, or `ip netns add` fails)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr}")
    return result


def check_available() -> None:
    """Raise :class:`NamespacesUnavailable` with the reason if the lab cannot be built."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NamespacesUnavailable("network namespaces need root (run the netns tests as root)")
    if shutil.which("ip") is None:
        raise NamespacesUnavailable("no `ip` binary (install iproute2)")
    probe = f"mgnprobe{secrets.token_hex(3)}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        raise NamespacesUnavailable(f"`ip netns add` fails here: {result.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


@dataclass
class Host:
    """One machine of the lab: a namespace with ``eth0`` on the bridge."""

    index: int
    namespace: str
    address: str
    port_name: str
    """The bridge-side end of its veth (in the switch namespace)."""
    decoy_address: str | None = None
    """Address of its ``docker0`` bridge, if it has one (see :meth:`create`)."""


@dataclass
class NetnsLab:
    """Hosts in namespaces on one bridge; build with :meth:`create`, end with :meth:`close`."""

    suffix: str
    switch: str
    hosts: list[Host] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    partitioned: bool = False
    impaired: dict[int, Relay] = field(default_factory=dict)
    """Hosts whose link runs through a relay (:meth:`impair`), and their relays."""

    @classmethod
    def create(cls, count: int, decoys: Sequence[int] = ()) -> NetnsLab:
        """Build ``count`` hosts; on any failure, tear down what was built and re-raise.

        Hosts whose index is in ``decoys`` get a ``docker0`` bridge (as Docker makes), made before
        ``eth0`` so that address enumeration lists it first (like a machine running
        Docker): the trap ``--interface`` exists for.
        """
        sweep_stale()
        suffix = f"{secrets.token_hex(3)}p{os.getpid()}"
        third = secrets.randbelow(250) + 1
        subnet = f"{SUBNET_PREFIX}.{third}"
        lab = cls(suffix=suffix, switch=f"mgn{suffix}sw")
        try:
            _ip("netns", "add", lab.switch)
            sw = ("-n", lab.switch)
            _ip(*sw, "link", "set", "lo", "up")
            for bridge in ("br0", "br1"):
                _ip(*sw, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
                _ip(*sw, "link", "set", bridge, "up")
            for index in range(count):
                host = Host(index, f"mgn{suffix}h{index}", f"{subnet}.{10 + index}", f"v{index}")
                _ip("netns", "add", host.namespace)
                lab.hosts.append(host)
                if index in decoys:
                    host.decoy_address = f"172.31.{third}.1"
                    decoy = ("-n", host.namespace)
                    _ip(*decoy, "link", "add", "docker0", "type", "bridge")
                    _ip(*decoy, "addr", "add", f"{host.decoy_address}/24", "dev", "docker0")
                    _ip(*decoy, "link", "set", "docker0", "up")
                _ip(*sw, "link", "add", host.port_name, "type", "veth",
                    "peer", "name", "eth0", "netns", host.namespace)  # fmt: skip
                _ip(*sw, "link", "set", host.port_name, "master", "br0", "up")
                inside = ("-n", host.namespace)
                _ip(*inside, "link", "set", "lo", "up")
                _ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
                _ip(*inside, "link", "set", "eth0", "up")
                _ip(*inside, "route", "add", "224.0.0.0/4", "dev", "eth0")
                in_namespace(host.namespace, lambda: disable_tx_offloads("eth0"))
        except BaseException:
            lab.close()
            raise
        return lab

    def popen(self, host: Host, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace; the lab kills it on close.

        ``ip netns exec`` execs the command in place, so the returned process *is* the
        command (a signal to it reaches the program, not a wrapper).
        """
        process = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", host.namespace, *argv], preexec_fn=die_with_parent, **kwargs
        )
        self.processes.append(process)
        return process  # type: ignore[no-any-return]

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split the LAN: the first group stays on br0, every other host moves to br1.

        Two groups at most (one spare bridge); the hosts of a group still see each other.
        """
        if len(groups) != 2:
            raise ValueError("the lab partitions into exactly two sides")
        for index in groups[1]:
            _ip("-n", self.switch, "link", "set", self._bridge_port(index), "master", "br1")
        self.partitioned = True

    def heal(self) -> None:
        """Every host back on br0: one LAN again."""
        for host in self.hosts:
            _ip("-n", self.switch, "link", "set", self._bridge_port(host.index), "master", "br0")
        self.partitioned = False

    def _bridge_port(self, index: int) -> str:
        """The switch-side interface that carries host ``index`` on a bridge."""
        return f"ib{index}" if index in self.impaired else self.hosts[index].port_name

    def impair(
        self,
        index: int,
        rule: Impairment,
        direction: Direction | Literal["both"] = "both",
        seed: int = 0,
    ) -> Relay:
        """Apply ``rule`` to host ``index``'s link (netem's job, see impairment.py).

        The first call puts a relay between the host's port (its ``left``) and its bridge
        (through a veth pair ``i<index>``/``ib<index>``); ``left_to_right`` is what the
        host sends (``tc netem`` on its ``eth0``), ``right_to_left`` what it receives.
        Later calls change the rule; :meth:`unimpair` takes the relay out again.
        """
        if index in self.impaired:
            self.impaired[index].set(rule, direction)
            return self.impaired[index]
        sw = ("-n", self.switch)
        port = self.hosts[index].port_name
        shown = _ip(*sw, "-o", "link", "show", "dev", port).stdout
        bridge = "br1" if " master br1 " in shown else "br0"
        _ip(*sw, "link", "add", f"i{index}", "type", "veth", "peer", "name", f"ib{index}")
        _ip(*sw, "link", "set", f"ib{index}", "master", bridge, "up")
        _ip(*sw, "link", "set", f"i{index}", "up")
        _ip(*sw, "link", "set", port, "nomaster")
        relay = Relay.start(self.switch, port, f"i{index}", seed=seed)
        self.impaired[index] = relay
        relay.set(rule, direction)
        return relay

    def unimpair(self, index: int) -> None:
        """Take host ``index``'s relay out: its port goes back on the bridge it was on."""
        relay = self.impaired.pop(index)
        relay.close()
        sw = ("-n", self.switch)
        shown = _ip(*sw, "-o", "link", "show", "dev", f"ib{index}").stdout
        bridge = "br1" if " master br1 " in shown else "br0"
        _ip(*sw, "link", "set", self.hosts[index].port_name, "master", bridge)
        _ip(*sw, "link", "del", f"i{index}")

    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces (safe to call twice)."""
        for relay in self.impaired.values():
            relay.close()
        self.impaired.clear()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for host in self.hosts:
            _ip("netns", "del", host.namespace, check=False)
        _ip("netns", "del", self.switch, check=False)
        self.hosts.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this lab that still exist (for a test of the teardown itself)."""
        listed = _ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in listed.splitlines() if self.suffix in line]


_LIBC = ctypes.CDLL(None, use_errno=True)
"""Loaded once, in the parent: the forked child must not dlopen (other threads' locks)."""


def die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies (prctl(2))."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def sweep_stale() -> None:
    """Delete labs whose creating process is gone (and kill what still runs in them)."""
    listed = _ip("netns", "list", check=False).stdout
    for line in listed.splitlines():
        match = STALE.match(line)
        if match is None or os.path.exists(f"/proc/{match.group(2)}"):
            continue
        name = match.group(1)
        for pid in _ip("netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", name, check=False)


def in_namespace(namespace: str, function: Callable[[], T]) -> T:
    """Run ``function`` on a new thread that has joined ``namespace``; return its result.

    Exceptions propagate to the caller. Only that thread changes namespace.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            with open(os.path.join(NETNS_DIR, namespace)) as handle:
                if _LIBC.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
            outcome.append(function())
        except BaseException as error:  # handed to the caller's thread below
            failure.append(error)

    thread = threading.Thread(target=body, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
