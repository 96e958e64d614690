"""Membership's wire format: the SWIM messages and the piggybacked updates about members.

Tags 1-31 (``meshgpu.core.messages`` holds the envelope, the codec and the registry).
Probes: :class:`Ping`, :class:`Ack`, :class:`PingReq`, :class:`Nack` (Lifeguard).
Carriers: :class:`Gossip` and :class:`AntiEntropy` (bodies whose point is their
piggybacked updates), :class:`PushPull` (a whole member table, in parts, as
:class:`MemberRecord` entries). Updates (piggybacked, one per member and news):
:class:`Alive`, :class:`Suspect`, :class:`Dead`, :class:`Left`.

Bodies: each body type says ``DECODED_AS_BUILT``: an instance as a sender builds it is
field for field, type for type what decoding its bytes gives (ints, strings, booleans,
tuples and shared records), so a simulated receiver may take the sender's object
(``NodeContext.keep_decoded``; ``tests/sim/test_decoded_datagrams.py`` checks it).

Decoding caches: in a forming or quiet mesh every node receives the same updates and
records again and again (each ``Alive`` about lambda*log(n) times, every push-pull the
same records); building the frozen dataclass is most of the cost of decoding one, and the
result is immutable, so equal wire values share one object. One function per update
checks its fields (the ``expect_*`` checks, which say what is wrong) and builds it; the
decoder calls it through a ``functools.lru_cache(typed=True)``, so a value seen before
is neither checked nor built again: only checked values are cached (a check that fails
raises, and exceptions are not cached), and ``typed`` keeps ``True`` or ``5.0`` from
matching a cached ``1`` or ``5``. A field that cannot be a cache key (a list where a
string belongs) goes to the same function uncached, which refuses it. Pure caches: they
change no result, only the cost. Probes (:class:`Ping`, :class:`Ack`) carry a new
sequence number each, so they are checked with the boolean ``is_*`` checks and built by
a fast constructor instead of cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from meshgpu.core.fast_construct import fast_constructor
from meshgpu.core.messages import (
    encode_value,
    expect_address,
    expect_bool,
    expect_int,
    expect_list,
    expect_str,
    is_count,
    is_id,
    register_message,
)
from meshgpu.core.types import Address, NodeId

# --- probes and dissemination (SWIM) ------------------------------------------------------


@register_message
@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM direct probe of ``target``; answered with :class:`Ack` of the same ``seq``."""

    TAG: ClassVar[int] = 1
    DECODED_AS_BUILT: ClassVar[bool] = True
    seq: int
    target: NodeId

    def to_fields(self) -> list[Any]:
        return [self.seq, self.target]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Ping:
        if len(fields) == 2:
            seq, target = fields
            if is_count(seq) and is_id(target):
                return new_ping(seq, target)
        expect_list(fields, "Ping", 2)
        return cls(expect_int(fields[0], "seq"), expect_str(fields[1], "target"))


@register_message
@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a :class:`Ping` (or a relayed one) with the prober's ``seq``."""

    TAG: ClassVar[int] = 2
    DECODED_AS_BUILT: ClassVar[bool] = True
    seq: int

    def to_fields(self) -> list[Any]:
        return [self.seq]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Ack:
        if len(fields) == 1 and is_count(fields[0]):
            return new_ack(fields[0])
        expect_list(fields, "Ack", 1)
        return cls(expect_int(fields[0], "seq"))


new_ping = fast_constructor(Ping)
"""``Ping(seq, target)``, fast: every node sends one per probe period."""
new_ack = fast_constructor(Ack)
"""``Ack(seq)``, fast: one per ping answered."""


@register_message
@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM indirect probe: "please ping ``target`` for me and forward its ack"."""

    TAG: ClassVar[int] = 3
    DECODED_AS_BUILT: ClassVar[bool] = True
    seq: int
    target: NodeId
    target_address: Address
    want_nack: bool

    def to_fields(self) -> list[Any]:
        return [self.seq, self.target, list(self.target_address), self.want_nack]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> PingReq:
        expect_list(fields, "PingReq", 4)
        return cls(
            expect_int(fields[0], "seq"),
            expect_str(fields[1], "target"),
            expect_address(fields[2], "target address"),
            expect_bool(fields[3], "want_nack"),
        )


@register_message
@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: a relay heard nothing from the target. A prober that gets neither ack nor
    nack from its relays learns that the trouble is likely its own (local health)."""

    TAG: ClassVar[int] = 4
    DECODED_AS_BUILT: ClassVar[bool] = True
    seq: int

    def to_fields(self) -> list[Any]:
        return [self.seq]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Nack:
        expect_list(fields, "Nack", 1)
        return cls(expect_int(fields[0], "seq"))


@register_message
@dataclass(frozen=True, slots=True)
class Gossip:
    """A datagram whose only purpose is its piggybacked updates."""

    TAG: ClassVar[int] = 5
    DECODED_AS_BUILT: ClassVar[bool] = True

    def to_fields(self) -> list[Any]:
        return []

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Gossip:
        expect_list(fields, "Gossip", 0)
        return cls()


@register_message
@dataclass(frozen=True, slots=True)
class AntiEntropy:
    """Like :class:`Gossip`, but the piggybacked updates are a peer's full state sent with a
    push-pull exchange: receivers apply them and do not re-gossip them (pairwise repair
    must not turn into a flood)."""

    TAG: ClassVar[int] = 7
    DECODED_AS_BUILT: ClassVar[bool] = True

    def to_fields(self) -> list[Any]:
        return []

    @classmethod
    def from_fields(cls, fields: list[Any]) -> AntiEntropy:
        expect_list(fields, "AntiEntropy", 0)
        return cls()


MEMBER_STATE_CODES = ("alive", "suspect", "dead", "left")
"""Wire codes of member states: the index in this tuple."""

RECENT_LIMIT = 16384
"""How many recently decoded updates and records each decoding cache keeps."""


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member as a push-pull exchange reports it."""

    node_id: NodeId
    address: Address
    state: str
    incarnation: int

    def to_fields(self) -> list[Any]:
        host, port = self.address
        return [self.node_id, host, port, MEMBER_STATE_CODES.index(self.state), self.incarnation]

    @classmethod
    def from_fields(cls, raw: object) -> MemberRecord:
        if type(raw) is list and len(raw) == 5:
            try:
                return _cached_member_record(*raw)
            except TypeError:  # an unhashable field: refused below
                pass
        return _member_record(*expect_list(raw, "member record", 5))


@register_message
@dataclass(frozen=True, slots=True)
class PushPull:
    """Anti-entropy: part ``part`` of ``parts`` of the sender's full member table.

    A request (``reply`` false) is answered by the receiver's own table, once per exchange
    (on part 0). A push-pull from an unknown sender is how a new node joins.
    """

    TAG: ClassVar[int] = 6
    DECODED_AS_BUILT: ClassVar[bool] = True
    reply: bool
    part: int
    parts: int
    members: tuple[MemberRecord, ...]

    def to_fields(self) -> list[Any]:
        return [self.reply, self.part, self.parts, [m.to_fields() for m in self.members]]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> PushPull:
        expect_list(fields, "PushPull", 4)
        parts = expect_int(fields[2], "parts", 1, 65535)
        return cls(
            expect_bool(fields[0], "reply"),
            expect_int(fields[1], "part", 0, parts - 1),
            parts,
            tuple([MemberRecord.from_fields(m) for m in expect_list(fields[3], "members")]),
        )


PUSH_PULL_RECORD_BUDGET = 1150
"""Bytes of member records per push-pull datagram (leaves room for header and updates)."""


def record_wire_size(node_id: NodeId, address: Address) -> int:
    """What a member's record counts against :data:`PUSH_PULL_RECORD_BUDGET` (an upper
    bound of its packed size: it depends on the member's id and host alone)."""
    return len(node_id) + len(address[0]) + 16


def chunk_records(records: tuple[MemberRecord, ...]) -> list[tuple[MemberRecord, ...]]:
    """Split a table into push-pull parts that each fit one datagram: records in order,
    a new part where the next record would take the part past the budget."""
    chunks: list[list[MemberRecord]] = [[]]
    used = 0
    for record in records:
        size = record_wire_size(record.node_id, record.address)
        if used + size > PUSH_PULL_RECORD_BUDGET and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(record)
        used += size
    return [tuple(chunk) for chunk in chunks]


def encode_push_pull(message: PushPull, packed_members: bytes | None = None) -> bytes:
    """``encode_body(message)``, byte for byte, from each record's bytes packed once per
    process (:func:`packed_record`) rather than once per part sent.

    msgpack writes an array as its header followed by each element's bytes, so the body
    is the head ``[TAG, reply, part, parts]`` grown to five elements, then the records'
    array header and each record's own bytes (a test compares it with ``encode_body``).
    Why: a push-pull part carries ~35 records, and once a mesh has formed the records
    sent per event are what grows with its size (a table of n records every push-pull
    period, a period that grows only as log n); packing each from its fields was most
    of what a 1,000-node mesh spends per event beyond a 100-node one.
    ``packed_members``: ``encode_records(message.members)``, when the caller kept it."""
    head = encode_value([PushPull.TAG, message.reply, message.part, message.parts])
    if packed_members is None:
        packed_members = encode_records(message.members)
    return b"\x95" + head[1:] + packed_members


def encode_records(members: tuple[MemberRecord, ...]) -> bytes:
    """The msgpack array of ``members``' fields, as a push-pull body ends with it (the
    part of :func:`encode_push_pull` a sender may keep between exchanges)."""
    count = len(members)
    if count <= 15:
        header = bytes((0x90 | count,))
    elif count <= 0xFFFF:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    get = _PACKED_RECORDS.get
    packed = []
    for record in members:
        entry = get(id(record))
        packed.append(
            entry[1] if entry is not None and entry[0] is record else packed_record(record)
        )
    return header + b"".join(packed)


_PACKED_RECORDS: dict[int, tuple[MemberRecord, bytes]] = {}
"""``id(record) -> (record, its msgpack bytes)``: the records of every table in a process
are shared objects (:data:`shared_member_record`), so each is packed once, not once per
table sent. The entry holds the record, so its id is not reused while the entry lives;
a pure cache, emptied when it reaches :data:`RECENT_LIMIT` entries."""


def packed_record(record: MemberRecord) -> bytes:
    """The msgpack bytes of ``record``'s fields, as a push-pull body carries them."""
    entry = _PACKED_RECORDS.get(id(record))
    if entry is not None and entry[0] is record:
        return entry[1]
    packed = encode_value(record.to_fields())
    if len(_PACKED_RECORDS) >= RECENT_LIMIT:
        _PACKED_RECORDS.clear()
    _PACKED_RECORDS[id(record)] = (record, packed)
    return packed


shared_member_record = functools.lru_cache(maxsize=RECENT_LIMIT)(MemberRecord)
"""``MemberRecord(node_id, address, state, incarnation)``, one object per distinct value:
every node of a simulated mesh builds the same records for its push-pull tables (a
million of them at 1,000 nodes), and a record is immutable. A pure cache."""


def _member_record(
    node_id: object, host: object, port: object, code: object, incarnation: object
) -> MemberRecord:
    """Check the fields of one member record and build it."""
    return MemberRecord(
        expect_str(node_id, "member id"),
        (expect_str(host, "member host", 255), expect_int(port, "port", 0, 65535)),
        MEMBER_STATE_CODES[expect_int(code, "member state", 0, len(MEMBER_STATE_CODES) - 1)],
        expect_int(incarnation, "member incarnation"),
    )


_cached_member_record = functools.lru_cache(maxsize=RECENT_LIMIT, typed=True)(_member_record)


# --- membership updates (piggybacked) -----------------------------------------------------


@register_message
@dataclass(frozen=True, slots=True)
class Alive:
    """``node_id`` is alive at ``incarnation`` and listens at ``address``: a join or a
    refutation (a higher incarnation overrides any suspicion or death)."""

    TAG: ClassVar[int] = 16
    node_id: NodeId
    address: Address
    incarnation: int

    def to_fields(self) -> list[Any]:
        return [self.node_id, self.address[0], self.address[1], self.incarnation]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Alive:
        if len(fields) == 4:
            try:
                return _cached_alive(*fields)
            except TypeError:  # an unhashable field: refused below
                pass
        return _alive(*expect_list(fields, "Alive", 4))


new_alive = fast_constructor(Alive)
"""``Alive(...)``, fast: a push-pull record of a member new to its receiver becomes one (n
squared as a mesh of n forms)."""


def _alive(node_id: object, host: object, port: object, incarnation: object) -> Alive:
    """Check the fields of one Alive and build it."""
    return Alive(
        expect_str(node_id, "node id"),
        (expect_str(host, "host", 255), expect_int(port, "port", 0, 65535)),
        expect_int(incarnation, "incarnation"),
    )


_cached_alive = functools.lru_cache(maxsize=RECENT_LIMIT, typed=True)(_alive)


_Accusation = TypeVar("_Accusation", "Suspect", "Dead")


def _accusation_from_fields(
    cls: type[_Accusation], fields: list[Any], cached: Callable[..., _Accusation]
) -> _Accusation:
    """Decode ``[node_id, incarnation, accuser]`` (Suspect and Dead share the shape)."""
    if len(fields) == 3:
        try:
            return cached(*fields)
        except TypeError:  # an unhashable field: refused below
            pass
    return _accusation(cls, *expect_list(fields, cls.__name__, 3))


def _accusation(
    cls: type[_Accusation], node_id: object, incarnation: object, accuser: object
) -> _Accusation:
    """Check the fields of one Suspect or Dead and build it."""
    return cls(
        expect_str(node_id, "node id"),
        expect_int(incarnation, "incarnation"),
        expect_str(accuser, "accuser"),
    )


@register_message
@dataclass(frozen=True, slots=True)
class Suspect:
    """``accuser`` suspects ``node_id`` at ``incarnation`` (each distinct accuser is one
    Lifeguard confirmation)."""

    TAG: ClassVar[int] = 17
    node_id: NodeId
    incarnation: int
    accuser: NodeId

    def to_fields(self) -> list[Any]:
        return [self.node_id, self.incarnation, self.accuser]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Suspect:
        return _accusation_from_fields(cls, fields, _suspect)


@register_message
@dataclass(frozen=True, slots=True)
class Dead:
    """``accuser`` declared ``node_id`` dead at ``incarnation``."""

    TAG: ClassVar[int] = 18
    node_id: NodeId
    incarnation: int
    accuser: NodeId

    def to_fields(self) -> list[Any]:
        return [self.node_id, self.incarnation, self.accuser]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Dead:
        return _accusation_from_fields(cls, fields, _dead)


_suspect = functools.lru_cache(maxsize=RECENT_LIMIT, typed=True)(
    functools.partial(_accusation, Suspect)
)
_dead = functools.lru_cache(maxsize=RECENT_LIMIT, typed=True)(functools.partial(_accusation, Dead))


@register_message
@dataclass(frozen=True, slots=True)
class Left:
    """``node_id`` left the mesh on purpose at ``incarnation`` (only it may say so)."""

    TAG: ClassVar[int] = 19
    node_id: NodeId
    incarnation: int

    def to_fields(self) -> list[Any]:
        return [self.node_id, self.incarnation]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Left:
        expect_list(fields, "Left", 2)
        return cls(expect_str(fields[0], "node id"), expect_int(fields[1], "incarnation"))
