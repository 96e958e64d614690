"""Wire codec: round trips, strict rejection, registry rules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import pytest

from meshgpu.core.load import DeviceCapabilities, LoadUpdate, LoadVector
from meshgpu.core.membership.wire import (
    Ack,
    Alive,
    AntiEntropy,
    Dead,
    Gossip,
    Left,
    MemberRecord,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    encode_push_pull,
    new_ack,
    new_ping,
    shared_member_record,
)
from meshgpu.core.messages import (
    EMPTY_PIGGYBACK,
    MAX_DATAGRAM_BYTES,
    PROTOCOL_VERSION,
    Envelope,
    decode,
    encode,
    encode_bare,
    encode_body,
    encode_head,
    encode_item,
    envelope_prefix,
    finish_datagram,
    register_message,
)
from meshgpu.errors import DecodeError

LOAD = LoadVector(
    version=3,
    active_tasks=1,
    free_slots=2,
    queue_length=4,
    utilisation=0.5,
    memory_used=10,
    memory_total=100,
    capabilities=DeviceCapabilities(("gpu", "cpu"), True, 100),
    latency_estimates=(("abc", 0.25),),
)

BODIES = [
    Ping(1, "n1"),
    Ack(2),
    PingReq(3, "n2", ("10.0.0.2", 7946), True),
    Nack(4),
    Gossip(),
    AntiEntropy(),
    PushPull(False, 0, 2, (MemberRecord("n1", ("h", 1), "dead", 7),)),
]
UPDATES = [
    Alive("n1", ("10.0.0.1", 7946), 3),
    Suspect("n1", 3, "n2"),
    Dead("n1", 3, "n2"),
    Left("n1", 4),
    LoadUpdate("n1", LOAD),
    LoadUpdate(
        "n2",
        dataclasses.replace(
            LOAD, usable_devices=("opencl:1 gfx803", "onnxruntime:cpu"), fallback_models=("ab12",)
        ),
    ),
]


def test_a_load_without_device_reports_keeps_its_eleven_fields() -> None:
    """The device fields are encoded only when present: the simulator's loads (and so
    every reference trace hash) keep their bytes."""
    assert len(LOAD.to_fields()) == 11
    reported = dataclasses.replace(LOAD, usable_devices=("onnxruntime:cpu",))
    assert len(reported.to_fields()) == 13
    assert LoadVector.from_fields(reported.to_fields()) == reported
    with pytest.raises(DecodeError, match="11 items"):
        LoadVector.from_fields([*LOAD.to_fields(), []])


@pytest.mark.parametrize("body", BODIES)
def test_every_body_round_trips_with_piggyback(body: Any) -> None:
    envelope = Envelope("sender", 5, 9, body, tuple(UPDATES))
    data = encode(envelope)
    assert len(data) < MAX_DATAGRAM_BYTES
    assert decode(data) == envelope


def test_spliced_datagram_equals_plain_encoding() -> None:
    head = encode_head("s", 1, 2, Ping(7, "t"))
    items = [encode_item(u) for u in UPDATES]
    assert finish_datagram(head, items) == encode(Envelope("s", 1, 2, Ping(7, "t"), tuple(UPDATES)))
    many = [encode_item(Ack(i)) for i in range(20)]  # array16 header path
    assert decode(finish_datagram(head, many)).piggyback == tuple(Ack(i) for i in range(20))
    assert encode_bare("s", 1, 2, Ack(1)) == encode(Envelope("s", 1, 2, Ack(1)))


@pytest.mark.parametrize(
    ("sender", "incarnation", "view", "body"),
    [
        ("s", 1, 2, Ack(1)),
        ("n-0042", 0, 0, Ping(7, "n-0001")),
        ("x" * 64, 2**40, 70000, Ping(2**33, "y" * 64)),  # wider int and str headers
        ("n-0", 127, 128, Gossip()),
    ],
)
def test_kept_prefix_plus_body_is_the_bare_encoding(
    sender: str, incarnation: int, view: int, body: Any
) -> None:
    """NodeContext.send keeps envelope_prefix per (incarnation, view) and packs only the
    body: the bytes must be encode_bare's, or the wire (and every trace hash) moves."""
    spliced = envelope_prefix(sender, incarnation, view) + encode_body(body) + EMPTY_PIGGYBACK
    assert spliced == encode_bare(sender, incarnation, view, body)
    assert decode(spliced) == Envelope(sender, incarnation, view, body)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 35, 70000])  # fixarray, array16, array32
def test_push_pull_spliced_from_packed_records_is_the_plain_encoding(count: int) -> None:
    """send_push_pull splices each record's bytes, packed once per process: the body
    must be encode_body's, and so must the head NodeContext.send builds from it."""
    states = ("alive", "suspect", "dead", "left")
    records = tuple(
        shared_member_record(f"n-{i:05d}", (f"10.0.{i // 250}.{i % 250}", i), states[i % 4], i)
        for i in range(count)
    )
    for reply, part in ((False, 0), (True, 200)):
        body = PushPull(reply, part, 300, records)
        spliced = encode_push_pull(body)
        assert spliced == encode_body(body)
        assert encode_push_pull(body) == spliced  # from the packed records this time
        head = b"\x95" + envelope_prefix("n-1", 3, 4)[1:] + spliced
        assert head == encode_head("n-1", 3, 4, body)


def test_slot_built_ping_and_ack_equal_the_dataclass_ones() -> None:
    assert new_ping(7, "t") == Ping(7, "t")
    assert hash(new_ping(7, "t")) == hash(Ping(7, "t"))
    assert new_ack(9) == Ack(9)
    assert type(new_ack(9)) is Ack and type(new_ping(1, "t")) is Ping
    with pytest.raises(AttributeError):
        new_ack(9).seq = 3  # type: ignore[misc]  # still frozen


def _raw(*envelope: object) -> bytes:
    packed: bytes = msgpack.packb(list(envelope), use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "msgpack"),
        (b"\x96\x01", "msgpack"),
        (_raw(PROTOCOL_VERSION + 1, "s", 0, 0, [2, 1], []), "newer protocol version"),
        (_raw(0, "s", 0, 0, [2, 1], []), "older protocol version"),
        (_raw(PROTOCOL_VERSION, "s", 0, 0, [200, 1], []), "unknown message tag"),
        (_raw(PROTOCOL_VERSION, "s", -1, 0, [2, 1], []), "incarnation"),
        (_raw(PROTOCOL_VERSION, "", 0, 0, [2, 1], []), "sender"),
        (_raw(PROTOCOL_VERSION, "s", 0, 0, [2, True], []), "seq"),
        (_raw(PROTOCOL_VERSION, "s", 0, 0, [2, 1, 2], []), "Ack"),
        (_raw(PROTOCOL_VERSION, "s", 0, 0, [2, 1], [[17, "x", 1]]), "Suspect"),
        (_raw(PROTOCOL_VERSION, "s", 0, 0, [2, 1]), "6 fields"),
        (_raw(True, "s", 0, 0, [2, 1], []), "version"),
        (b"\x00" * (MAX_DATAGRAM_BYTES + 1), "exceeds"),
        (msgpack.packb({"a": 1}), "array"),
    ],
)
def test_malformed_datagrams_are_rejected_with_a_reason(data: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert fragment in str(info.value)


def test_registry_refuses_a_second_class_on_a_used_tag() -> None:
    with pytest.raises(ValueError, match="already used"):

        @register_message
        @dataclass(frozen=True)
        class Impostor:
            TAG: ClassVar[int] = Ping.TAG

            def to_fields(self) -> list[Any]:
                return []

            @classmethod
            def from_fields(cls, fields: list[Any]) -> Impostor:
                return cls()


def test_a_registered_type_that_raises_oddly_is_still_a_decode_error() -> None:
    @register_message
    @dataclass(frozen=True)
    class Fragile:
        TAG: ClassVar[int] = 250

        def to_fields(self) -> list[Any]:
            return []

        @classmethod
        def from_fields(cls, fields: list[Any]) -> Fragile:
            raise AttributeError("oops")

    with pytest.raises(DecodeError, match="Fragile"):
        decode(_raw(PROTOCOL_VERSION, "s", 0, 0, [250], []))


@pytest.mark.parametrize(
    ("cls", "good", "bad"),
    [
        (Alive, ["n1", "10.0.0.1", 7946, 1], ["n1", "10.0.0.1", 7946, True]),
        (Alive, ["n1", "10.0.0.1", 7946, 1], ["n1", "10.0.0.1", 7946.0, 1]),
        (Suspect, ["n1", 1, "n2"], ["n1", True, "n2"]),
        (Dead, ["n1", 1, "n2"], ["n1", 1, ["n2"]]),  # unhashable: not a cache key
        (MemberRecord, ["n1", "10.0.0.1", 7946, 0, 1], ["n1", "10.0.0.1", 7946, False, 1]),
        (MemberRecord, ["n1", "10.0.0.1", 7946, 0, 1], ["n1", ["10.0.0.1"], 7946, 0, 1]),
    ],
)
def test_the_decoding_caches_never_let_an_equal_value_of_another_type_through(
    cls: Any, good: list[Any], bad: list[Any]
) -> None:
    """A decoded update is cached by its field values and types (``True == 1`` and
    ``7946.0 == 7946`` in Python, not on the wire): the good one first fills the cache,
    the bad one is still refused, and the good one decodes to one shared object."""
    first = cls.from_fields(good)
    with pytest.raises(DecodeError):
        cls.from_fields(bad)
    again = cls.from_fields(list(good))
    assert again == first and again is first
