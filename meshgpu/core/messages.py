"""Wire messages of the mesh: typed, versioned, msgpack-encoded, with an open registry.

Every datagram is one :class:`Envelope`, encoded as a compact msgpack array::

    [PROTOCOL_VERSION, sender_id, sender_incarnation, view, body, piggyback]
    body      = [tag, *fields]            one message, dispatched by its tag
    piggyback = [[tag, *fields], ...]     gossiped updates riding along (SWIM piggybacking)

The header carries the sender's id and incarnation (so a refutation spreads with every
datagram a node sends) and its leader view (so the highest view spreads the same way).

Message types are frozen dataclasses registered by tag with :func:`register_message`.
Core tags are 1-31 (membership, :mod:`meshgpu.core.membership.wire`), 32-47 (load) and
48 (the model catalog, :mod:`meshgpu.core.catalog`); the task queue uses 64-127
(:mod:`meshgpu.core.tasks.wire`). Each type
turns itself into a list of msgpack-native fields (``to_fields``) and back
(``from_fields``), validating every field with the ``expect_*`` functions below.

:func:`decode` is the trust boundary: it raises only :class:`DecodeError`, for anything
truncated, oversized, of another protocol version, with an unknown tag or a malformed
field. Nothing decoded is trusted further than its types.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, cast

import msgpack

from meshgpu.core.fast_construct import fast_constructor
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


def is_count(value: object) -> bool:
    """``expect_int(value, ...)`` would accept it (hot-path check, no exception)."""
    return type(value) is int and 0 <= value <= MAX_INT


def is_id(value: object) -> bool:
    """``expect_str(value, ...)`` would accept it (hot-path check, no exception)."""
    return type(value) is str and 0 < len(value) <= MAX_ID_LENGTH


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


_shared_items = functools.lru_cache(maxsize=4096)(encode_item)


def encode_shared_item(message: Message) -> bytes:
    """:func:`encode_item` for small immutable updates that many nodes of one process queue
    alike (membership's ``Alive``/``Suspect``/``Dead``/``Left``): equal updates share one
    ``bytes`` (a forming 1,000-node mesh queues a million of them). Only for hashable
    messages whose hash is cheap; a pure cache."""
    return _shared_items(cast(Hashable, message))


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


def encode_value(value: object) -> bytes:
    """The msgpack bytes of one msgpack-native value, packed as inside every datagram
    (for callers that splice pre-encoded parts, such as push-pull's member records)."""
    packed: bytes = _PACK(value)
    return packed


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


def decode_message(data: bytes, what: str = "piggyback item") -> Message:
    """One message encoded on its own (``[tag, *fields]``, as :func:`encode_item` and
    :func:`encode_body` make it) decoded exactly as :func:`decode` decodes it inside a
    datagram. Raises only :class:`DecodeError`."""
    try:
        raw = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack {what}: {exc!r}") from exc
    return _decode_message(raw, what)


DECODED_ITEMS_LIMIT = 16384
"""How many decoded items :func:`decode_items` keeps before it starts afresh."""

_decoded_items: dict[bytes, Message] = {}


def decode_items(items: Sequence[bytes]) -> tuple[Message, ...]:
    """:func:`decode_message` of each piggybacked item, cached by the item's bytes: a
    node queues each update once and splices the same ``bytes`` into every datagram it
    rides in (``encode_shared_item`` makes them one object across nodes), and decoding is
    a pure function of the bytes, so equal bytes share one immutable message. A plain
    dict (emptied when it reaches :data:`DECODED_ITEMS_LIMIT`) looked up in C for the
    whole list: an ``lru_cache`` per item cost 4 times as much, a tenth of a forming
    1,000-node mesh's run. A failure raises :class:`DecodeError` and caches nothing.
    Used by senders that keep the decoded form of what they send
    (``NodeContext.keep_decoded``)."""
    cache = _decoded_items
    decoded = list(map(cache.get, items))
    if not all(decoded):  # (a miss is None; messages are true, so this runs in C)
        if len(cache) >= DECODED_ITEMS_LIMIT:
            cache.clear()
        for number, item in enumerate(items):
            if decoded[number] is None:
                decoded[number] = cache[item] = decode_message(item)
    return tuple(decoded)  # type: ignore[arg-type]


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


new_envelope = fast_constructor(Envelope)
"""``Envelope(sender, incarnation, view, body, piggyback)``, fast: once per datagram
(the generated ``__init__`` was 40 % of decoding a ping)."""


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
    if not items:  # most datagrams
        return new_envelope(sender, incarnation, view, body, ())
    if len(items) > MAX_PIGGYBACK_ITEMS:
        raise DecodeError(f"datagram carries {len(items)} updates (max {MAX_PIGGYBACK_ITEMS})")
    piggyback = tuple([_decode_message(item, "piggyback item") for item in items])
    return new_envelope(sender, incarnation, view, body, piggyback)
