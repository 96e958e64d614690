"""The gossip socket: every datagram in and out of the daemon, sealed and checked.

Outgoing, a ``SendDatagram`` payload is sealed (``auth/envelope.py``) and sent on the UDP
socket without a trip through trio's scheduler unless the buffer is full. Incoming, the
receiver wakes once per burst and drains what the kernel holds; each datagram is opened
(wrong key, replay, skewed clock: dropped and counted), datagrams from this node itself
and from a twin of its identity are dropped, and the rest are fed to the node. A datagram
of another protocol version or mesh, or sealed with a key the keyring removed, is
answered with a refusal (auth/handshake.py) that names both sides, at most once per
``REFUSAL_INTERVAL`` per source, so that both ends log why they never meet.
One source (address and port) may send at most ``UNREADABLE_BUDGET`` unreadable
datagrams a second that get opened; past that, its datagrams are dropped as they are
read, before any check, until the second ends (``datagrams_dropped_early``): a flood
from one socket costs a read each, and cannot take the receiver's time from the peers.
A source that sent a readable datagram in the last ``TRUSTED_S`` is never dropped early,
so a flood that forges a peer's address cannot cut that peer off (it is only opened and
refused). Sources are keyed by port too: daemons on one host (or behind one NAT) share
an address, and one of them must not cost the others their datagrams; a flood that
changes its port each time is opened and refused datagram by datagram, as before.
Before any of that, the kernel drops what cannot be an envelope: a classic BPF socket
filter (``SO_ATTACH_FILTER``, :func:`attach_envelope_filter`) passes only datagrams that
begin with the envelope's magic and are long enough for its fixed header; random
datagrams never wake the daemon. The kernel counts them in the socket's drops
(``SO_MEMINFO``, also the buffer overflows), copied to ``datagrams_dropped_in_kernel``
whenever the counters are read (:meth:`GossipSocket.refresh_counters`).
Kept apart from the daemon's lifecycle because it is the one place that knows about UDP:
the socket options, the MTU budget and the ordering rule that keeps a stalled loop from
suspecting live peers (:meth:`GossipSocket.take_queued`).

Contract: the socket takes the sockets, the authenticator, the duplicate-identity guard and
four callables (``feed`` a received datagram to the node driver, ``count`` a daemon
counter, ``rejected`` when a datagram failed authentication, ``twin_found`` when a live
twin of this node's identity was heard); it knows nothing else of the daemon.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from collections.abc import Callable

import trio

from meshgpu.core.events import DatagramReceived
from meshgpu.core.types import Address
from meshgpu.daemon.auth import MAX_OVERHEAD, Authenticator, Channel
from meshgpu.daemon.auth.handshake import FIXED, MAGIC
from meshgpu.daemon.identity import DuplicateIdentityGuard
from meshgpu.errors import ConfigError, DuplicateIdentityError, IncompatiblePeerError, MeshError

logger = logging.getLogger("meshgpu.daemon")

UDP_MTU_BUDGET = 1400
"""Bytes a gossip datagram may take on the wire, envelope included."""
ENVELOPE_MAX_OVERHEAD = MAX_OVERHEAD
REFUSAL_INTERVAL = 10.0
"""Seconds between two refusals (and two warnings) for one source address."""
RECEIVE_BURST = 64
"""Most datagrams handled per wake-up of the receiver before it yields to other tasks."""
UNREADABLE_BUDGET = 32
"""Unreadable datagrams (wrong key, garbage, replays) opened per source and second; the
rest of that second's datagrams from the source are dropped unread."""
TRUSTED_S = 10.0
"""Seconds after a readable datagram during which its source is never dropped early."""
SOURCES_REMEMBERED = 4096
"""Sources the budget keeps at most (forged sources cannot grow it without bound)."""
SO_ATTACH_FILTER = 26
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8
"""Linux's socket options and the index of the drops in ``SO_MEMINFO``'s counters."""
_UDP_HEADER = 8
"""A UDP socket's filter sees the datagram from its UDP header (the payload at 8)."""
_BPF = struct.Struct("HBBI")
"""One classic BPF instruction: code, jump if true, jump if false, constant."""


def _envelope_filter() -> list[tuple[int, int, int, int]]:
    """The classic BPF program: keep a datagram whose payload holds at least an
    envelope's fixed header and begins with its magic; drop the rest."""
    ld_len, ld_half = 0x00 | 0x00 | 0x80, 0x00 | 0x08 | 0x20  # BPF_LD|W|LEN, LD|H|ABS
    jge, jeq, ret = 0x05 | 0x30, 0x05 | 0x10, 0x06  # BPF_JMP|JGE|K, JMP|JEQ|K, RET|K
    return [
        (ld_len, 0, 0, 0),
        (jge, 0, 3, _UDP_HEADER + FIXED.size),
        (ld_half, 0, 0, _UDP_HEADER),
        (jeq, 0, 1, int.from_bytes(MAGIC, "big")),
        (ret, 0, 0, 0xFFFFFFFF),  # the whole datagram
        (ret, 0, 0, 0),  # dropped
    ]


def attach_envelope_filter(sock: socket.socket) -> bool:
    """Have the kernel drop datagrams to ``sock`` that cannot be envelopes (Linux);
    False where the filter cannot be attached (the daemon then opens each itself)."""
    program = ctypes.create_string_buffer(b"".join(_BPF.pack(*i) for i in _envelope_filter()))
    fprog = struct.pack("HL", len(_envelope_filter()), ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as error:
        logger.debug("no socket filter on the gossip port: %s", error)
        return False
    return True


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for ``sock`` (its filter, a full buffer); None
    where the kernel does not say."""
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
    except OSError:
        return None
    if len(info) < 4 * (SK_MEMINFO_DROPS + 1):
        return None
    return int(struct.unpack_from("I", info, 4 * SK_MEMINFO_DROPS)[0])


class GossipSocket:
    """The daemon's UDP socket (stdlib and trio views of the same one)."""

    def __init__(
        self,
        raw: socket.socket,
        udp: trio.socket.SocketType,
        authenticator: Authenticator,
        guard: DuplicateIdentityGuard,
        feed: Callable[[DatagramReceived], None],
        count: Callable[[str], None],
        rejected: Callable[[], None] = lambda: None,
        twin_found: Callable[[Address], None] = lambda address: None,
    ) -> None:
        self.raw = raw
        self.udp = udp
        self.authenticator = authenticator
        self.guard = guard
        self._feed = feed
        self._count = count
        self._rejected = rejected
        self._twin_found = twin_found
        self._sealer = authenticator.new_session(Channel.DATAGRAM)
        self._last_refusal: dict[Address, float] = {}
        self._unreadable: dict[Address, int] = {}
        """Unreadable datagrams per source in the current second."""
        self._dropping: set[Address] = set()
        """Sources over their budget in the current second."""
        self._trusted: dict[Address, float] = {}
        """Source -> when a readable datagram last came from it."""
        self._second = trio.current_time()
        self.filtered = attach_envelope_filter(raw)
        """The kernel drops datagrams that cannot be envelopes (Linux)."""

    def refresh_counters(self, counters: dict[str, int]) -> None:
        """Copy the kernel's drops for the socket into ``counters``
        (``datagrams_dropped_in_kernel``: not an envelope, or the buffer full)."""
        drops = kernel_drops(self.raw)
        if drops is not None:
            counters["datagrams_dropped_in_kernel"] = drops

    async def send(self, destination: Address, payload: bytes) -> None:
        """Seal ``payload`` and send it; a send error is counted and logged, not raised."""
        data = self._sealer.seal(payload)
        try:
            try:
                # Non-blocking send without a trip through the scheduler (two checkpoints
                # per datagram in trio's sendto); await only if the buffer is full.
                self.raw.sendto(data, destination)
            except BlockingIOError:
                await self.udp.sendto(data, destination)
            self._count("datagrams_sent")
        except OSError as error:
            self._count("datagram_send_errors")
            logger.debug("sending to %s failed: %s", destination, error)

    async def receive(self) -> None:
        """Feed every datagram that arrives, forever (a task of the daemon's nursery)."""
        raw = self.raw
        while True:
            # Wake once per burst and drain every queued datagram before yielding: the
            # effects of the whole burst then run in one pass of the executor.
            await trio.lowlevel.wait_readable(raw)
            self.take_queued()
            await trio.lowlevel.checkpoint()

    def take_queued(self) -> None:
        """Handle the datagrams the kernel already holds, before a due timer fires.

        After a stall of the loop (GIL held by a worker thread, CPU starvation) the woken
        timer and the readable socket are run in random order by trio, so half the time
        a probe's deadline was handled before the ack that sat waiting in the socket:
        a false suspicion of a live node. Measured with 3 live daemons whose loops a
        GIL-holding thread stalled about 0.5 s at a time, per node-minute: 10-12
        suspicions and 4-6 false deaths without this, 2-6 suspicions and 0-1 deaths
        with it. One burst at most (the receiver's own step too).
        """
        raw = self.raw
        now = trio.current_time()
        if now - self._second >= 1.0:
            self._second = now
            self._unreadable.clear()
            self._dropping.clear()
        dropping = self._dropping
        for _ in range(RECEIVE_BURST):
            try:
                data, source = raw.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as error:  # e.g. ICMP port unreachable surfacing on Linux
                self._count("datagram_receive_errors")
                logger.debug("udp receive error: %s", error)
                continue
            if dropping and source in dropping:
                self._count("datagrams_dropped_early")
                continue
            self._on_datagram(data, (source[0], source[1]))

    def _unreadable_from(self, source: Address) -> None:
        """Count an unreadable datagram against ``source``'s budget for this second."""
        strikes = self._unreadable.get(source, 0) + 1
        if len(self._unreadable) >= SOURCES_REMEMBERED and strikes == 1:
            self._unreadable.clear()
        self._unreadable[source] = strikes
        if strikes >= UNREADABLE_BUDGET:
            trusted = self._trusted.get(source)
            if trusted is None or trio.current_time() - trusted > TRUSTED_S:
                self._dropping.add(source)

    def _on_datagram(self, data: bytes, source: Address) -> None:
        """Open, check and feed one received datagram."""
        self._count("datagrams_received")
        try:
            envelope = self.authenticator.open(data, Channel.DATAGRAM, source)
        except IncompatiblePeerError as error:
            self._count("datagrams_rejected")
            self._rejected()
            self._unreadable_from(source)
            self._incompatible(error, source)
            return
        except MeshError as error:
            self._count("datagrams_rejected")
            self._rejected()
            self._unreadable_from(source)
            logger.debug("dropped datagram from %s:%d: %s", *source, error)
            return
        if len(self._trusted) >= SOURCES_REMEMBERED and source not in self._trusted:
            self._trusted.clear()
        self._trusted[source] = trio.current_time()
        if envelope.from_self:
            self._count("datagrams_from_self")
            return
        if not self._check_twin(envelope.sender, source):
            return
        self._feed(DatagramReceived(source, envelope.payload))

    def _incompatible(self, error: IncompatiblePeerError, source: Address) -> None:
        """A peer of another version or mesh: warn, and tell it why."""
        now = trio.current_time()
        if now - self._last_refusal.get(source, -REFUSAL_INTERVAL) < REFUSAL_INTERVAL:
            return
        if len(self._last_refusal) > 1024:
            self._last_refusal.clear()
        self._last_refusal[source] = now
        logger.warning("%s:%d: %s", *source, error)
        if error.reason == "refused_by_peer":
            return  # a refusal is never answered
        try:
            self.raw.sendto(self.authenticator.refusal(Channel.DATAGRAM, error), source)
            self._count("refusals_sent")
        except OSError as send_error:  # BlockingIOError included: a refusal may be lost
            logger.debug("refusal to %s:%d not sent: %s", *source, send_error)

    def _check_twin(self, sender: str, source: Address) -> bool:
        """False when the datagram comes from a twin of ours (it is then not fed)."""
        guard = self.guard
        try:
            message = guard.observe(sender, False, source, trio.current_time())
        except DuplicateIdentityError:
            self._twin_found(source)  # the API port is the gossip port
            return False
        if message is None:
            return True
        self._count("duplicate_identity")
        if guard.sightings in (1, 10, 100) or guard.sightings % 1000 == 0:
            logger.error("%s", message)
        return False


async def bind_sockets(
    host: str, port: int
) -> tuple[socket.socket, trio.socket.SocketType, list[trio.SocketListener]]:
    """A UDP socket (stdlib and trio views of it) and TCP listeners on the same port
    number (ephemeral if port is 0)."""
    last_error: OSError | None = None
    for _ in range(20):
        # A stdlib socket wrapped by trio: the daemon sends and drains datagrams on the
        # stdlib object directly (non-blocking) and awaits only when it would block.
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp = trio.socket.from_stdlib_socket(raw)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            await udp.bind((host, port))
            chosen = udp.getsockname()[1]
            listeners = await trio.open_tcp_listeners(chosen, host=host)
            return raw, udp, listeners
        except OSError as error:
            udp.close()
            last_error = error
            if port != 0:
                break
    raise ConfigError(
        f"cannot listen on {host}:{port}: {last_error}; another daemon may be using the "
        "port (pick another with --port) or the address is not on this machine (--bind)"
    )
