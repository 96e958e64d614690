"""Wire messages of the mesh: typed, versioned, msgpack-encoded, with an open registry.

Every datagram is one :class:`Envelope`, encoded as a compact msgpack array::

    [PROTOCOL_VERSION, sender_id, sender_incarnation, view, body, piggyback]
    body      = [tag, *fields]            one message, dispatched by its tag
    piggyback = [[tag, *fields], ...]     gossiped updates riding along (SWIM piggybacking)

The header carries the sender's id and incarnation (so a refutation spreads with every
datagram a node sends) and its leader view (so the highest view spreads the same way).

Message types are frozen dataclasses registered by tag with :func:`register_message`.
Core tags are 1-31 (membership) and 32-47 (load); the task queue uses 64-127. Each type
turns itself into a list of msgpack-native fields (``to_fields``) and back
(``from_fields``), validating every field with the ``expect_*`` functions below.

:func:`decode` is the trust boundary: it raises only :class:`DecodeError`, for anything
truncated, oversized, of another protocol version, with an unknown tag or a malformed
field. Nothing decoded is trusted further than its types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import msgpack

from meshgpu.core.types import Address, NodeId
from meshgpu.errors import DecodeError

PROTOCOL_VERSION = 1
"""Bumped on any incompatible wire change; other versions are rejected and counted."""

MAX_DATAGRAM_BYTES = 1400
"""Hard ceiling for any datagram accepted by :func:`decode`."""

MAX_PIGGYBACK_ITEMS = 64
"""Most piggybacked updates accepted in one datagram."""

MAX_ID_LENGTH = 64
"""Longest node id (or other identifier) accepted on the wire."""

MAX_INT = 2**63 - 1


class Message(Protocol):
    """What a registered message type provides (a frozen dataclass in practice)."""

    TAG: ClassVar[int]

    def to_fields(self) -> list[Any]:
        """The message as msgpack-native values, in a fixed order (without the tag)."""
        ...

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Message:
        """Rebuild the message from ``to_fields`` output; raise DecodeError if malformed."""
        ...


M = TypeVar("M", bound=Message)

_REGISTRY: dict[int, type[Message]] = {}


def register_message(cls: type[M]) -> type[M]:
    """Register ``cls`` under ``cls.TAG`` (use as a class decorator).

    Registering the same class twice is harmless (module reloads in tests); two different
    classes on one tag is a programming error and raises ValueError at import time.
    """
    tag = cls.TAG
    if not isinstance(tag, int) or not 0 < tag < 256:
        raise ValueError(f"message tag must be an int in 1..255, got {tag!r} for {cls}")
    existing = _REGISTRY.get(tag)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"message tag {tag} already used by {existing.__qualname__}")
    _REGISTRY[tag] = cls
    return cls


def registered_messages() -> dict[int, type[Message]]:
    """A copy of the registry: tag -> message type."""
    return dict(_REGISTRY)


# --- field validation (used by every message type, including other modules') -----------


def expect_int(value: object, what: str, low: int = 0, high: int = MAX_INT) -> int:
    """An integer in ``[low, high]`` (bools are not integers on the wire)."""
    if type(value) is not int or not low <= value <= high:
        raise DecodeError(f"malformed message: {what} must be an integer in [{low}, {high}]")
    return value


def expect_float(value: object, what: str, low: float = 0.0, high: float = math.inf) -> float:
    """A finite number in ``[low, high]`` (msgpack may carry it as int or float)."""
    if type(value) is int:
        value = float(value)
    if type(value) is not float or not math.isfinite(value) or not low <= value <= high:
        raise DecodeError(f"malformed message: {what} must be a finite number in [{low}, {high}]")
    return value


def expect_bool(value: object, what: str) -> bool:
    """A msgpack boolean."""
    if type(value) is not bool:
        raise DecodeError(f"malformed message: {what} must be a boolean")
    return value


def expect_str(value: object, what: str, max_length: int = MAX_ID_LENGTH) -> str:
    """A non-empty string of at most ``max_length`` characters."""
    if type(value) is not str or not 0 < len(value) <= max_length:
        raise DecodeError(
            f"malformed message: {what} must be a string of 1..{max_length} characters"
        )
    return value


def expect_list(value: object, what: str, length: int | None = None) -> list[Any]:
    """A list (of exactly ``length`` items when given)."""
    if type(value) is not list or (length is not None and len(value) != length):
        wanted = "a list" if length is None else f"a list of {length} items"
        raise DecodeError(f"malformed message: {what} must be {wanted}")
    return value


def expect_address(value: object, what: str) -> Address:
    """``[host, port]`` as a tuple."""
    pair = expect_list(value, what, 2)
    return (expect_str(pair[0], f"{what} host", 255), expect_int(pair[1], f"{what} port", 0, 65535))


def _is_count(value: object) -> bool:
    """``expect_int(value, ...)`` would accept it (hot-path check, no exception)."""
    return type(value) is int and 0 <= value <= MAX_INT


def _is_id(value: object) -> bool:
    """``expect_str(value, ...)`` would accept it (hot-path check, no exception)."""
    return type(value) is str and 0 < len(value) <= MAX_ID_LENGTH


_RECENT: dict[tuple[Any, ...], Message] = {}
"""Recently decoded membership updates by their exact fields (the hot-path checks have
already pinned every field to ``str`` or ``int``, so equal keys mean equal wire values).
During a mass join every node receives each ``Alive`` about lambda*log(n) times; building
the frozen dataclass is most of the cost of decoding it, and the result is immutable, so
equal updates share one object. A pure cache: it changes no result, only the cost."""

_RECENT_LIMIT = 16384


def _remember(key: tuple[Any, ...], message: Message) -> Message:
    if len(_RECENT) >= _RECENT_LIMIT:
        _RECENT.clear()  # bounded memory; the next receipts refill it
    _RECENT[key] = message
    return message


# --- the envelope and the codec -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded datagram: who sent it, their incarnation and view, the body, the updates."""

    sender: NodeId
    incarnation: int
    view: int
    body: Message
    piggyback: tuple[Message, ...] = ()


_PACK = msgpack.Packer(use_bin_type=True).pack
"""One reused packer: ``msgpack.packb`` builds a new ``Packer`` per call, which was half
of its cost on a ping. Safe to share: ``pack`` runs in C without releasing the GIL (no
``default`` hook) and resets its buffer after each call, errors included."""


def encode_item(message: Message) -> bytes:
    """Encode one message as ``[tag, *fields]``: the unit of piggybacking (encoded once,
    then spliced into as many datagrams as it is retransmitted in)."""
    packed: bytes = _PACK([message.TAG, *message.to_fields()])
    return packed


def encode_head(sender: NodeId, incarnation: int, view: int, body: Message) -> bytes:
    """The envelope without its piggyback list; finish it with :func:`finish_datagram`."""
    packed: bytes = _PACK(
        [PROTOCOL_VERSION, sender, incarnation, view, [body.TAG, *body.to_fields()]]
    )
    return packed


def encode_bare(sender: NodeId, incarnation: int, view: int, body: Message) -> bytes:
    """A whole datagram with nothing piggybacked (the common case), in one packb call."""
    packed: bytes = _PACK(
        [PROTOCOL_VERSION, sender, incarnation, view, [body.TAG, *body.to_fields()], []]
    )
    return packed


def envelope_prefix(sender: NodeId, incarnation: int, view: int) -> bytes:
    """The first bytes of every datagram ``sender`` sends at this incarnation and view:
    the 6-element array's header, the version, the sender, the incarnation and the view.

    msgpack encodes an array as its header followed by each element's own encoding, so
    ``envelope_prefix(...) + encode_body(body) + EMPTY_PIGGYBACK`` is byte for byte
    ``encode_bare(sender, incarnation, view, body)``. A node's prefix changes only when
    its incarnation or view does, so senders keep it and pack only the body."""
    header: bytes = _PACK(PROTOCOL_VERSION) + _PACK(sender) + _PACK(incarnation) + _PACK(view)
    return b"\x96" + header


def encode_body(body: Message) -> bytes:
    """``[tag, *fields]`` of a datagram's body (see :func:`envelope_prefix`)."""
    packed: bytes = _PACK([body.TAG, *body.to_fields()])
    return packed


EMPTY_PIGGYBACK = b"\x90"
"""The encoding of an empty piggyback list (a msgpack fixarray of length 0)."""


def finish_datagram(head: bytes, items: Sequence[bytes]) -> bytes:
    """Splice pre-encoded piggyback items onto a head from :func:`encode_head`.

    The head is a 5-element msgpack fixarray (first byte 0x95); the datagram is the same
    array grown to 6 elements with the piggyback array appended, without re-encoding.
    """
    count = len(items)
    short = count <= 15
    array_header = bytes((0x90 | count,)) if short else b"\xdc" + count.to_bytes(2, "big")
    return b"\x96" + head[1:] + array_header + b"".join(items)


def piggyback_overhead(count: int) -> int:
    """Bytes :func:`finish_datagram` adds beyond the head and the items themselves."""
    return 1 if count <= 15 else 3


def encode(envelope: Envelope) -> bytes:
    """Encode a whole envelope (convenience for tests and one-off messages)."""
    head = encode_head(envelope.sender, envelope.incarnation, envelope.view, envelope.body)
    return finish_datagram(head, [encode_item(item) for item in envelope.piggyback])


def _decode_message(raw: object, what: str) -> Message:
    if type(raw) is not list or not raw:
        raise DecodeError(f"malformed message: {what} must be a non-empty list")
    tag = raw[0]
    cls = _REGISTRY.get(tag) if type(tag) is int else None
    if cls is None:
        raise DecodeError(f"unknown message tag {tag!r} in {what}")
    try:
        return cls.from_fields(raw[1:])
    except DecodeError:
        raise
    except Exception as exc:  # a message type's validation missed a case: still rejected
        raise DecodeError(f"malformed {cls.__name__} in {what}: {exc!r}") from exc


def _envelope_error(raw: object) -> DecodeError:
    """Say precisely why ``raw`` is not a valid envelope (off the fast path)."""
    if type(raw) is not list or not raw:
        return DecodeError("malformed datagram: not a non-empty msgpack array")
    version = raw[0]
    if type(version) is not int:
        return DecodeError("malformed datagram: protocol version is not an integer")
    if version != PROTOCOL_VERSION:
        newer = "a newer" if version > PROTOCOL_VERSION else "an older"
        return DecodeError(
            f"datagram of {newer} protocol version {version} (this node speaks "
            f"{PROTOCOL_VERSION}); upgrade the older node"
        )
    return DecodeError("malformed datagram: envelope must have 6 fields")


_NEW = object.__new__
_SET_SENDER = vars(Envelope)["sender"].__set__
_SET_INCARNATION = vars(Envelope)["incarnation"].__set__
_SET_VIEW = vars(Envelope)["view"].__set__
_SET_BODY = vars(Envelope)["body"].__set__
_SET_PIGGYBACK = vars(Envelope)["piggyback"].__set__


def _envelope(
    sender: NodeId, incarnation: int, view: int, body: Message, piggyback: tuple[Message, ...]
) -> Envelope:
    """``Envelope(sender, incarnation, view, body, piggyback)``, built slot by slot: the
    frozen dataclass's ``__init__`` goes through ``object.__setattr__`` per field (1.4 us,
    40 % of decoding a ping); writing the slots directly is the same object (no
    ``__post_init__``, every field set) for a third of the cost. Once per datagram."""
    envelope: Envelope = _NEW(Envelope)
    _SET_SENDER(envelope, sender)
    _SET_INCARNATION(envelope, incarnation)
    _SET_VIEW(envelope, view)
    _SET_BODY(envelope, body)
    _SET_PIGGYBACK(envelope, piggyback)
    return envelope


def decode(data: bytes) -> Envelope:
    """Decode and validate one datagram. Raises only :class:`DecodeError`."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DecodeError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM_BYTES}")
    try:
        # msgpack>=1.0 defaults are raw=False, strict_map_key=True (what we want);
        # passing them as keywords cost 40% of the call on a ping.
        raw = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack datagram: {exc!r}") from exc
    if type(raw) is not list or len(raw) != 6 or type(raw[0]) is not int:
        raise _envelope_error(raw)
    version, sender, incarnation, view, body_raw, items = raw
    if version != PROTOCOL_VERSION:
        raise _envelope_error(raw)
    if type(sender) is not str or not 0 < len(sender) <= MAX_ID_LENGTH:
        expect_str(sender, "sender")
    if type(incarnation) is not int or not 0 <= incarnation <= MAX_INT:
        expect_int(incarnation, "incarnation")
    if type(view) is not int or not 0 <= view <= MAX_INT:
        expect_int(view, "view")
    # _decode_message(body_raw, "body") inlined for a well-formed body (once per datagram);
    # anything else goes through it for its precise error
    tag = body_raw[0] if type(body_raw) is list and body_raw else None
    cls = _REGISTRY.get(tag) if type(tag) is int else None
    if cls is not None:
        try:
            body = cls.from_fields(body_raw[1:])
        except DecodeError:
            raise
        except Exception as exc:  # a message type's validation missed a case: rejected
            raise DecodeError(f"malformed {cls.__name__} in body: {exc!r}") from exc
    else:
        body = _decode_message(body_raw, "body")
    if type(items) is not list:
        raise DecodeError("malformed datagram: piggyback must be a list")
    if not items:  # _envelope(sender, incarnation, view, body, ()) inlined: most datagrams
        envelope: Envelope = _NEW(Envelope)
        _SET_SENDER(envelope, sender)
        _SET_INCARNATION(envelope, incarnation)
        _SET_VIEW(envelope, view)
        _SET_BODY(envelope, body)
        _SET_PIGGYBACK(envelope, ())
        return envelope
    if len(items) > MAX_PIGGYBACK_ITEMS:
        raise DecodeError(f"datagram carries {len(items)} updates (max {MAX_PIGGYBACK_ITEMS})")
    piggyback = tuple([_decode_message(item, "piggyback item") for item in items])
    return _envelope(sender, incarnation, view, body, piggyback)


# --- membership messages (SWIM) -------------------------------------------------------------


@register_message
@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM direct probe of ``target``; answered with :class:`Ack` of the same ``seq``."""

    TAG: ClassVar[int] = 1
    seq: int
    target: NodeId

    def to_fields(self) -> list[Any]:
        return [self.seq, self.target]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Ping:
        if len(fields) == 2:  # hot path: the same checks as below, inline
            seq, target = fields
            if (  # _is_count and _is_id inlined
                type(seq) is int
                and 0 <= seq <= MAX_INT
                and type(target) is str
                and 0 < len(target) <= MAX_ID_LENGTH
            ):
                ping: Ping = _NEW(cls)  # = cls(seq, target), slot by slot (see _envelope)
                _SET_PING_SEQ(ping, seq)
                _SET_PING_TARGET(ping, target)
                return ping
        expect_list(fields, "Ping", 2)
        return cls(expect_int(fields[0], "seq"), expect_str(fields[1], "target"))


@register_message
@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a :class:`Ping` (or a relayed one) with the prober's ``seq``."""

    TAG: ClassVar[int] = 2
    seq: int

    def to_fields(self) -> list[Any]:
        return [self.seq]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Ack:
        if len(fields) == 1:  # hot path: _is_count inlined
            seq = fields[0]
            if type(seq) is int and 0 <= seq <= MAX_INT:
                ack: Ack = _NEW(cls)  # = cls(seq), slot by slot (see _envelope)
                _SET_ACK_SEQ(ack, seq)
                return ack
        expect_list(fields, "Ack", 1)
        return cls(expect_int(fields[0], "seq"))


_SET_PING_SEQ = vars(Ping)["seq"].__set__
_SET_PING_TARGET = vars(Ping)["target"].__set__
_SET_ACK_SEQ = vars(Ack)["seq"].__set__


def new_ping(seq: int, target: NodeId) -> Ping:
    """``Ping(seq, target)`` built slot by slot (see :func:`_envelope`): the same object
    for a third of the cost; every node sends one per probe period."""
    ping: Ping = _NEW(Ping)
    _SET_PING_SEQ(ping, seq)
    _SET_PING_TARGET(ping, target)
    return ping


def new_ack(seq: int) -> Ack:
    """``Ack(seq)`` built slot by slot (see :func:`new_ping`): one per ping answered."""
    ack: Ack = _NEW(Ack)
    _SET_ACK_SEQ(ack, seq)
    return ack


@register_message
@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM indirect probe: "please ping ``target`` for me and forward its ack"."""

    TAG: ClassVar[int] = 3
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

    def to_fields(self) -> list[Any]:
        return []

    @classmethod
    def from_fields(cls, fields: list[Any]) -> AntiEntropy:
        expect_list(fields, "AntiEntropy", 0)
        return cls()


MEMBER_STATE_CODES = ("alive", "suspect", "dead", "left")
"""Wire codes of member states: the index in this tuple."""

_RECENT_RECORDS: dict[tuple[Any, ...], MemberRecord] = {}
"""Recently decoded push-pull records by their exact wire fields: every push-pull of a
quiet mesh repeats the same records, and they are immutable (the same pure cache as
``_RECENT``: it changes no result, only the cost)."""


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
        if type(raw) is list and len(raw) == 5:  # hot path: the checks below, inline
            node_id, host, port, code, incarnation = raw
            if (  # _is_id and _is_count inlined: this runs per record of every push-pull
                type(node_id) is str
                and 0 < len(node_id) <= MAX_ID_LENGTH
                and type(host) is str
                and 0 < len(host) <= 255
                and type(port) is int
                and 0 <= port <= 65535
                and type(code) is int
                and 0 <= code <= 3
                and type(incarnation) is int
                and 0 <= incarnation <= MAX_INT
            ):
                key = (node_id, host, port, code, incarnation)
                known = _RECENT_RECORDS.get(key)
                if known is None:
                    if len(_RECENT_RECORDS) >= _RECENT_LIMIT:
                        _RECENT_RECORDS.clear()
                    known = cls(node_id, (host, port), MEMBER_STATE_CODES[code], incarnation)
                    _RECENT_RECORDS[key] = known
                return known
        fields = expect_list(raw, "member record", 5)
        return cls(
            expect_str(fields[0], "member id"),
            (expect_str(fields[1], "member host", 255), expect_int(fields[2], "port", 0, 65535)),
            MEMBER_STATE_CODES[expect_int(fields[3], "member state", 0, 3)],
            expect_int(fields[4], "member incarnation"),
        )


@register_message
@dataclass(frozen=True, slots=True)
class PushPull:
    """Anti-entropy: part ``part`` of ``parts`` of the sender's full member table.

    A request (``reply`` false) is answered by the receiver's own table, once per exchange
    (on part 0). A push-pull from an unknown sender is how a new node joins.
    """

    TAG: ClassVar[int] = 6
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
        if len(fields) == 4:  # hot path: the same checks as below, inline
            node_id, host, port, incarnation = fields
            if (  # _is_id and _is_count inlined: the commonest update of a forming mesh
                type(node_id) is str
                and 0 < len(node_id) <= MAX_ID_LENGTH
                and type(host) is str
                and 0 < len(host) <= 255
                and type(port) is int
                and 0 <= port <= 65535
                and type(incarnation) is int
                and 0 <= incarnation <= MAX_INT
            ):
                key = (cls.TAG, node_id, host, port, incarnation)
                known = _RECENT.get(key)
                if known is None:
                    known = _remember(key, cls(node_id, (host, port), incarnation))
                return known  # type: ignore[return-value]
        expect_list(fields, "Alive", 4)
        return cls(
            expect_str(fields[0], "node id"),
            (expect_str(fields[1], "host", 255), expect_int(fields[2], "port", 0, 65535)),
            expect_int(fields[3], "incarnation"),
        )


_Accusation = TypeVar("_Accusation", "Suspect", "Dead")


def _accusation_from_fields(cls: type[_Accusation], fields: list[Any]) -> _Accusation:
    """Decode ``[node_id, incarnation, accuser]`` (Suspect and Dead share the shape)."""
    if len(fields) == 3:  # hot path
        node_id, incarnation, accuser = fields
        if _is_id(node_id) and _is_count(incarnation) and _is_id(accuser):
            key = (cls.TAG, node_id, incarnation, accuser)
            known = _RECENT.get(key)
            if known is None:
                known = _remember(key, cls(node_id, incarnation, accuser))
            return known  # type: ignore[return-value]
    expect_list(fields, cls.__name__, 3)
    return cls(
        expect_str(fields[0], "node id"),
        expect_int(fields[1], "incarnation"),
        expect_str(fields[2], "accuser"),
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
        return _accusation_from_fields(cls, fields)


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
        return _accusation_from_fields(cls, fields)


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
