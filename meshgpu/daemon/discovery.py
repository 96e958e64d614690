"""Finding peers: mDNS (zeroconf) bridged into trio, and static ``--peer`` seeds.

Each daemon registers ``<node-id>-<run>._meshgpu._udp.local.`` with its gossip port and
a TXT record ``mesh=<name> id=<node-id> run=<run> v=1`` and browses for the same type.
Only services whose ``mesh`` matches ours become :class:`Sighting`\\s; others are counted
and ignored. The daemon turns sightings into ``PeerDiscovered`` events; the core decides
what to do.

Fast start (docs/operations.md, "mDNS without name probing"): the browser starts
*before* our own registration, and the registration skips RFC 6762 name probing
(zeroconf's ``cooperating_responders=True``) and does not wait for its three
announcements. Probing costs about 1.2 s here (a random 150-250 ms, then three probes
500 ms apart) and exists only to find a name already taken; ours cannot be: ``<run>``
is 64 random bits made per process, so two processes never share an instance name,
not even two copies of one data dir (which share the node id).

Threads: zeroconf runs its own threads (an asyncio loop and the browser thread). The
browser's callback resolves the service there (a blocking call, fine on that thread;
the announcement's records are usually already cached) and hands the result to trio
with ``TrioToken.run_sync_soon`` + ``send_nowait`` on a bounded memory channel, which
never blocks the zeroconf thread; a full channel drops the sighting (mDNS re-announces)
and counts it. Construction and shutdown block for a moment (sockets, goodbye packets),
so they run in trio worker threads; shutdown is shielded from cancellation so goodbyes
still go out.

A second live node with our id (a copied data dir) shows up here as a sighting with our
node id and another ``run``: :attr:`Sighting.twin` is set. Both twins see each other,
so both must reach the same verdict on who is the copy: the TXT record carries the
process's start time (``since``, wall-clock milliseconds) and the later start (ties: the
larger run token) is the copy (:attr:`Sighting.we_are_the_copy`). The daemon decides
what to do with it (see :mod:`meshgpu.daemon.peer_finding`).

``--interface`` pins zeroconf to that interface's IPv4 address (users' most common
mDNS failure is a node announcing a container bridge address no peer can reach).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from meshgpu.core.types import Address, NodeId
from meshgpu.errors import ConfigError

SERVICE_TYPE = "_meshgpu._udp.local."
PROTOCOL_VERSION = "1"
DEFAULT_PORT = 7946
"""Gossip (UDP) and the TCP API share one port number (memberlist's port)."""
REGISTER_TIMEOUT_S = 10.0
"""How long registration may take (no probing: normally milliseconds)."""
STOP_TIMEOUT_S = 5.0
"""How long a stopping daemon waits for zeroconf's goodbye and close (milliseconds when
idle; each may wait 10 s and more for zeroconf's loop on a loaded machine). Past it the
thread is left to finish alone: zeroconf's threads are daemon threads, so a process
that exits does not wait for them."""

logger = logging.getLogger("meshgpu.daemon")


def one_line_socket_errors(record: logging.LogRecord) -> bool:
    """A filter of the ``zeroconf`` logger: a socket error is logged as one line.

    zeroconf logs a failed send or receive with its traceback (once per socket and
    message); while a partition or an interface change takes a node's link away,
    every send fails with "Invalid argument" or "Network is unreachable", and the
    traceback says nothing the error's text does not. The record keeps its message,
    the error's text appended, without the traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, OSError):
        if str(error) not in record.getMessage():
            record.msg = f"{record.msg} ({error})"
        record.exc_info = None
        record.exc_text = None
    return True


@dataclass(frozen=True, slots=True)
class Sighting:
    """mDNS says node ``node_id`` of our mesh gossips at ``address``.

    ``twin``: the service carries *our* node id but another process's ``run`` token:
    a second live node uses our identity (its data dir was copied).
    ``we_are_the_copy``: for a twin, it started before us (by the start times both
    announce), so this process is the one that should yield.
    """

    node_id: NodeId
    address: Address
    twin: bool = False
    we_are_the_copy: bool = False


def parse_peer(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or ``[V6]:PORT``) as a (host, port) pair."""
    host, separator, port_text = text.rpartition(":")
    if not separator or "]" in port_text:
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"peer {text!r}: port {port_text!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise ConfigError(f"peer {text!r} must look like HOST:PORT, e.g. 10.0.0.5:7946")
    return host, port


async def resolve_peer(host: str, port: int) -> Address:
    """The IPv4 gossip address of a seed (DNS names resolved without blocking the loop)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as error:
        raise ConfigError(f"cannot resolve peer {host}: {error}") from None
    return (str(infos[0][4][0]), port)


def parse_advertise(text: str, default_port: int) -> tuple[str, int]:
    """``--advertise HOST`` or ``HOST:PORT``: the address peers use to reach this node.

    Invoked at start (the CLI checks the text before anything starts; the daemon, once its
    port is bound, fills in that port when the text names none).
    """
    try:
        return parse_peer(text, default_port)
    except ConfigError:
        raise ConfigError(
            f"--advertise {text!r} must look like HOST or HOST:PORT, e.g. 203.0.113.7:17946"
        ) from None


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (for ``--interface``)."""
    import ifaddr

    names = []
    for adapter in ifaddr.get_adapters():
        names.append(adapter.nice_name)
        if adapter.nice_name == name or adapter.name == name:
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    return ip.ip
            raise ConfigError(f"interface {name} has no IPv4 address")
    raise ConfigError(f"no interface named {name}; interfaces here: {', '.join(names)}")


def local_ipv4_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this host (what we advertise when bound to *)."""
    import ifaddr

    found = [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]
    return found or ["127.0.0.1"]


class MdnsDiscovery:
    """Advertise this node and report same-mesh peers, for the life of :meth:`run`."""

    def __init__(
        self,
        mesh: str,
        node_id: NodeId,
        gossip_port: int,
        advertise: list[str],
        interface: str | None = None,
        queue_size: int = 256,
        run_token: str | None = None,
        started_ms: int | None = None,
    ) -> None:
        self.mesh = mesh
        self.node_id = node_id
        self.gossip_port = gossip_port
        self.advertise = advertise
        self.interface = interface
        self.queue_size = queue_size
        self.run_token = run_token or secrets.token_hex(8)
        """Random per process: makes our instance name unique without probing."""
        self.instance = f"{node_id}-{self.run_token}"
        self.started_ms = time.time_ns() // 1_000_000 if started_ms is None else started_ms
        """Wall-clock start, announced so that two twins agree on which one is the copy."""
        self.counters: dict[str, int] = {}
        self._zeroconf: Any = None
        self._browser: Any = None

    async def run(
        self,
        deliver: Callable[[Sighting], None],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register, browse and call ``deliver`` (in trio) per sighting until cancelled."""
        sender, receiver = trio.open_memory_channel[Sighting](self.queue_size)
        token = trio.lowlevel.current_trio_token()
        try:
            await trio.to_thread.run_sync(self._start, token, sender)
            task_status.started()
            async with receiver:
                async for sighting in receiver:
                    deliver(sighting)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
                try:  # abandoned at the deadline: a thread's work cannot be cancelled
                    await trio.to_thread.run_sync(self._stop, abandon_on_cancel=True)
                except Exception as error:  # zeroconf's EventLoopBlocked: the stop goes on
                    logger.warning("mDNS did not stop cleanly: %r", error)

    def _start(
        self, token: trio.lowlevel.TrioToken, sender: trio.MemorySendChannel[Sighting]
    ) -> None:
        """In a worker thread: open zeroconf, start browsing, then register ourselves.

        Browsing first means a peer's announcement is seen however our own registration
        goes; registering without probing (our name is unique by construction, see the
        module doc) and without waiting for the announcements to be sent means this
        returns in milliseconds, so sightings reach trio at once.
        """
        from zeroconf import (
            InterfaceChoice,
            IPVersion,
            ServiceBrowser,
            ServiceInfo,
            ServiceStateChange,
            Zeroconf,
        )

        zeroconf_log = logging.getLogger("zeroconf")
        if one_line_socket_errors not in zeroconf_log.filters:
            zeroconf_log.addFilter(one_line_socket_errors)
        interfaces: Any = [self.interface] if self.interface else InterfaceChoice.All
        self._zeroconf = zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if state_change is ServiceStateChange.Removed:
                return  # the gossip layer, not mDNS, decides when a node is gone
            info = zeroconf.get_service_info(service_type, name, timeout=2000)
            sighting = self._sighting(info, IPVersion.V4Only)
            if sighting is None:
                return
            # RunFinishedError: trio has gone, we are shutting down.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._hand_over, sender, sighting)

        self._browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{self.instance}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(address) for address in self.advertise],
            port=self.gossip_port,
            properties={
                "mesh": self.mesh,
                "id": self.node_id,
                "run": self.run_token,
                "since": str(self.started_ms),
                "v": PROTOCOL_VERSION,
            },
            server=f"{self.instance}.local.",
        )
        # The coroutine returns once the service is in zeroconf's registry (it answers
        # queries from then on); the announcements it schedules go out on their own.
        assert zc.loop is not None  # zeroconf's own loop runs from construction on
        registering = zc.async_register_service(info, cooperating_responders=True)
        asyncio.run_coroutine_threadsafe(registering, zc.loop).result(REGISTER_TIMEOUT_S)

    def _sighting(self, info: Any, version: Any) -> Sighting | None:
        if info is None:
            self._count("unresolved")
            return None
        properties = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (info.properties or {}).items()
        }
        if properties.get("mesh") != self.mesh:
            self._count("other_mesh")
            return None
        node_id = properties.get("id")
        addresses = info.parsed_addresses(version)
        if not node_id or not addresses or not info.port:
            self._count("incomplete")
            return None
        address = (addresses[0], int(info.port))
        if node_id == self.node_id:
            if properties.get("run") == self.run_token:
                return None  # ourselves
            self._count("twins")
            try:
                twin_started = int(properties.get("since") or 0)
            except ValueError:
                twin_started = 0  # unreadable: take it as the elder, so we yield
            ours, theirs = (self.started_ms, self.run_token), (twin_started, properties["run"])
            return Sighting(node_id, address, twin=True, we_are_the_copy=theirs < ours)
        return Sighting(node_id=node_id, address=address)

    def _hand_over(self, sender: trio.MemorySendChannel[Sighting], sighting: Sighting) -> None:
        """Runs in trio (scheduled from the zeroconf thread): never blocks."""
        try:
            sender.send_nowait(sighting)
            self._count("sightings")
        except trio.WouldBlock:
            self._count("dropped_queue_full")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _stop(self) -> None:
        """In a worker thread: cancel browsing, say goodbye, close zeroconf."""
        if self._browser is not None:
            self._browser.cancel()
            self._browser = None
        if self._zeroconf is not None:
            self._zeroconf.unregister_all_services()
            self._zeroconf.close()
            self._zeroconf = None

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
