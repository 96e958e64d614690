"""A userspace stand-in for ``tc netem``: a relay that moves Ethernet frames between two
interfaces and delays, drops, duplicates, reorders or cuts them on the way.

Why it exists: the kernels the network tests run on (CI runners, the development
machine) often ship without the ``sch_netem`` module (``tc qdisc add ... netem`` answers
"Specified qdisc kind is unknown") and without iptables/nftables, while namespaces and
veth pairs work everywhere. A relay needs neither: it is a "bump in the wire".

How: the two interfaces live in one namespace and belong to no bridge. The relay opens an
``AF_PACKET`` raw socket on each (``ETH_P_ALL``, promiscuous), reads every frame that
arrives on one side and writes it, unchanged, on the other side at the moment the
impairment says; it skips the frames it wrote itself (``PACKET_OUTGOING``). Because it
works at layer 2 it is transparent to everything above: ARP, multicast, IP, TCP, UDP.
Each direction has its own :class:`Impairment`; the randomness comes from one seeded
:class:`random.Random`, so a seed replays the same decisions for the same frame sequence.

Semantics follow netem's where they overlap:

* ``delay_s`` plus a uniform ``jitter_s`` either side (a jittered packet may overtake
  another, as with netem without a rate);
* ``loss``: the probability a frame is dropped;
* ``duplicate``: the probability a frame is sent twice (each copy delayed independently);
* ``reorder``: the probability a frame skips the delay and goes at once, overtaking the
  delayed ones before it (netem's ``reorder``; no effect without a delay);
* ``cut``: every frame is dropped (a partition of this link), until the rule changes.

A :class:`PortForward` may also sit in front of the host on the relay's left side: the
static NAT of one port that a node reached through a port forward (``--advertise``) has.

Frames larger than the interface MTU cannot be written to a packet socket, so the hosts
whose traffic crosses a relay must not hand the wire unsegmented or checksum-less frames:
:func:`disable_tx_offloads` turns the veth's transmit checksum offload off (which also
turns TSO off), so every frame on the wire is a complete, MTU-sized one.

The relay runs as its own process (``python -m tests.netns.impairment``, started by
:meth:`Relay.start` inside the namespace); the controller in the test process sends it
one JSON line per command on its stdin and reads one JSON line of answer on its stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import heapq
import json
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

Direction = Literal["left_to_right", "right_to_left"]
DIRECTIONS: tuple[Direction, Direction] = ("left_to_right", "right_to_left")
REPOSITORY = Path(__file__).resolve().parents[2]

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
RECEIVE_BUFFER = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Impairment:
    """What happens to the frames of one direction (the defaults: nothing)."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    cut: bool = False

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], not {value}")
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay_s and jitter_s cannot be negative")

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> Impairment:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown impairment fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**fields)


class LinkModel:
    """The decisions of a relay, without any I/O: for each frame, when its copies leave.

    Invoked by the relay loop once per frame read, with the time it was read.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rules: dict[Direction, Impairment] = dict.fromkeys(DIRECTIONS, Impairment())
        self.forward: PortForward | None = None
        self.counters: Counter[str] = Counter()

    def departures(self, direction: Direction, now: float) -> list[float]:
        """When each copy of a frame read at ``now`` is to be written ([] = dropped)."""
        rule = self.rules[direction]
        self.counters[f"{direction}_received"] += 1
        if rule.cut:
            self.counters[f"{direction}_cut"] += 1
            return []
        if rule.loss and self.rng.random() < rule.loss:
            self.counters[f"{direction}_lost"] += 1
            return []
        copies = 1
        if rule.duplicate and self.rng.random() < rule.duplicate:
            copies = 2
            self.counters[f"{direction}_duplicated"] += 1
        times = []
        for _ in range(copies):
            if rule.reorder and rule.delay_s and self.rng.random() < rule.reorder:
                self.counters[f"{direction}_reordered"] += 1
                times.append(now)
                continue
            jitter = self.rng.uniform(-rule.jitter_s, rule.jitter_s) if rule.jitter_s else 0.0
            times.append(now + max(0.0, rule.delay_s + jitter))
        return times


@dataclasses.dataclass(frozen=True)
class PortForward:
    """A port forward (static NAT of one port) for the host on the relay's left side.

    Frames toward the host (read on the right) addressed to ``address:outside_port`` are
    rewritten to ``inside_port``; frames from the host (read on the left) leaving
    ``address:inside_port`` are rewritten to come from ``outside_port``, so replies and the
    host's own datagrams carry the outside port, as behind a NAT router. Frames toward
    ``inside_port`` from the right are dropped: only the forward is open. UDP and TCP over
    IPv4; checksums are updated incrementally (RFC 1624).
    """

    address: str
    outside_port: int
    inside_port: int

    def rewrite(self, direction: Direction, frame: bytes) -> bytes | None:
        """The frame as it leaves the relay, or None to drop it."""
        parsed = _transport_ports(frame)
        if parsed is None:
            return frame
        offset, source, destination, checksum_at, source_port, destination_port = parsed
        address = socket.inet_aton(self.address)
        if direction == "right_to_left" and destination == address:
            if destination_port == self.inside_port:
                return None
            if destination_port == self.outside_port:
                return _with_port(frame, offset + 2, self.inside_port, checksum_at)
        from_inside = direction == "left_to_right" and source == address
        if from_inside and source_port == self.inside_port:
            return _with_port(frame, offset, self.outside_port, checksum_at)
        return frame


ETHERTYPE_IPV4 = 0x0800
TCP, UDP = 6, 17


def _transport_ports(
    frame: bytes,
) -> tuple[int, bytes, bytes, int | None, int, int] | None:
    """(offset of the TCP/UDP header, source and destination IPv4 addresses, offset of its
    checksum or None for a UDP datagram without one, source and destination ports) of an
    unfragmented-or-first-fragment TCP or UDP frame; None for anything else."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETHERTYPE_IPV4:
        return None
    header_length = (frame[14] & 0x0F) * 4
    protocol = frame[23]
    fragment_offset = struct.unpack_from("!H", frame, 20)[0] & 0x1FFF
    offset = 14 + header_length
    if protocol not in (TCP, UDP) or fragment_offset or len(frame) < offset + 8:
        return None
    checksum_at: int | None = offset + (16 if protocol == TCP else 6)
    if protocol == UDP and struct.unpack_from("!H", frame, offset + 6)[0] == 0:
        checksum_at = None
    source_port, destination_port = struct.unpack_from("!HH", frame, offset)
    return offset, frame[26:30], frame[30:34], checksum_at, source_port, destination_port


def _with_port(frame: bytes, at: int, port: int, checksum_at: int | None) -> bytes:
    """``frame`` with the 16-bit port at ``at`` set to ``port``, its L4 checksum updated."""
    out = bytearray(frame)
    (old,) = struct.unpack_from("!H", out, at)
    struct.pack_into("!H", out, at, port)
    if checksum_at is not None:
        (checksum,) = struct.unpack_from("!H", out, checksum_at)
        total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + port
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        updated = ~total & 0xFFFF
        if updated == 0 and out[23] == UDP:
            updated = 0xFFFF  # a computed zero is sent as all ones (RFC 768)
        struct.pack_into("!H", out, checksum_at, updated)
    return bytes(out)


# --- the relay process ----------------------------------------------------------------


def disable_tx_offloads(interface: str) -> None:
    """Turn transmit checksum offload (and with it TSO) off on ``interface`` of the calling
    thread's namespace: the SIOCETHTOOL ioctl ``ethtool -K IF tx off`` makes.

    Invoked for every interface whose frames may cross a relay: a veth otherwise hands over
    frames whose TCP/UDP checksum is left for hardware that does not exist (the receiver of
    the relayed copy drops them) and TCP segments larger than the MTU.
    """
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0), 8)
    request = struct.pack("16sP", interface.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


def packet_socket(interface: str) -> socket.socket:
    """A raw socket that reads every frame arriving on ``interface`` and writes frames to it."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((interface, ETH_P_ALL))
    index = socket.if_nametoindex(interface)
    membership = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
    sock.setblocking(False)
    return sock


def serve(left: str, right: str, seed: int) -> None:
    """The relay loop: frames both ways, commands on stdin, answers on stdout."""
    model = LinkModel(random.Random(seed))
    sockets = {"left": packet_socket(left), "right": packet_socket(right)}
    toward: dict[str, tuple[Direction, socket.socket]] = {
        "left": ("left_to_right", sockets["right"]),
        "right": ("right_to_left", sockets["left"]),
    }
    pending: list[tuple[float, int, socket.socket, bytes]] = []
    sequence = 0
    selector = selectors.DefaultSelector()
    for side, sock in sockets.items():
        selector.register(sock, selectors.EVENT_READ, side)
    control = sys.stdin.fileno()
    selector.register(control, selectors.EVENT_READ, "control")
    commands = b""
    answer({"ready": True, "pid": os.getpid()})
    while True:
        timeout = None if not pending else max(0.0, pending[0][0] - time.monotonic())
        for key, _ in selector.select(timeout):
            if key.data == "control":
                chunk = os.read(control, 65536)
                if not chunk:
                    return  # the controller closed our stdin: the relay's end
                commands += chunk
                while b"\n" in commands:
                    line, commands = commands.split(b"\n", 1)
                    answer(command(model, line.decode()))
                continue
            direction, out = toward[key.data]
            while True:
                try:
                    frame, address = key.fileobj.recvfrom(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue
                if model.forward is not None:
                    rewritten = model.forward.rewrite(direction, frame)
                    if rewritten is None:
                        model.counters[f"{direction}_closed_port"] += 1
                        continue
                    frame = rewritten
                for departure in model.departures(direction, time.monotonic()):
                    sequence += 1
                    heapq.heappush(pending, (departure, sequence, out, frame))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, out, frame = heapq.heappop(pending)
            try:
                out.send(frame)
                model.counters["sent"] += 1
            except OSError as error:
                model.counters[f"send_error_{error.errno}"] += 1


def command(model: LinkModel, line: str) -> dict[str, Any]:
    """Carry out one control line: ``{"set": {...}, "direction": "both"}`` or
    ``{"stats": true}``; invoked by the relay loop for each line on its stdin."""
    try:
        request = json.loads(line)
        if "set" in request:
            rule = Impairment.from_json(request["set"])
            direction = request.get("direction", "both")
            if direction not in (*DIRECTIONS, "both"):
                raise ValueError(f"direction is one of {DIRECTIONS} or 'both', not {direction!r}")
            for one in DIRECTIONS if direction == "both" else (direction,):
                model.rules[one] = rule
            return {"ok": True}
        if "forward" in request:
            fields = request["forward"]
            model.forward = None if fields is None else PortForward(**fields)
            return {"ok": True}
        if request.get("stats"):
            return {"ok": True, "counters": dict(model.counters)}
        raise ValueError(f"unknown command {line.strip()!r}")
    except (ValueError, TypeError) as error:
        return {"ok": False, "error": str(error)}


def answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# --- the controller, in the test process ---------------------------------------------


class RelayError(Exception):
    """The relay refused a command or died."""


class Relay:
    """A running relay between ``left`` and ``right`` of ``namespace``, and its controls."""

    def __init__(self, process: subprocess.Popen[str], namespace: str) -> None:
        self.process = process
        self.namespace = namespace

    @classmethod
    def start(cls, namespace: str, left: str, right: str, seed: int = 0) -> Relay:
        """Start the relay process in ``namespace`` and wait until its sockets are open.

        The process gets SIGKILL should the caller die (the lab's parent-death signal).
        """
        from tests.netns.lab import die_with_parent

        argv = ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.netns.impairment"]
        process = subprocess.Popen(
            [*argv, "--left", left, "--right", right, "--seed", str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPOSITORY,
            preexec_fn=die_with_parent,
        )
        relay = cls(process, namespace)
        relay._read()
        return relay

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            _, errors = self.process.communicate(timeout=10)
            raise RelayError(f"the relay in {self.namespace} exited: {errors[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("ok") is False:
            raise RelayError(reply["error"])
        return reply

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def set(self, rule: Impairment, direction: Direction | Literal["both"] = "both") -> None:
        """Apply ``rule`` to one direction or both; frames already delayed keep their time."""
        self._send({"set": dataclasses.asdict(rule), "direction": direction})

    def cut(self) -> None:
        """Drop every frame both ways (a partition of this link) until :meth:`set` or heal."""
        self.set(Impairment(cut=True))

    def heal(self, rule: Impairment | None = None) -> None:
        """End a cut: back to ``rule`` (default: no impairment)."""
        self.set(rule or Impairment())

    def forward(self, forward: PortForward | None) -> None:
        """Put ``forward`` in front of the host on the left (None: no forward)."""
        self._send({"forward": None if forward is None else dataclasses.asdict(forward)})

    def counters(self) -> dict[str, int]:
        """Frames received, lost, cut, duplicated, reordered (per direction) and sent."""
        return dict(self._send({"stats": True})["counters"])

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--left", required=True, help="interface of one side")
    parser.add_argument("--right", required=True, help="interface of the other side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    serve(args.left, args.right, args.seed)


if __name__ == "__main__":
    main()
