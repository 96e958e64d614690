"""Bad input: arbitrary bytes change no state and are counted; the decoder raises only
DecodeError. (Hypothesis prints the falsifying example and its seed on failure.)"""

from __future__ import annotations

import random
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgpu.core.config import MeshConfig
from meshgpu.core.events import DatagramReceived
from meshgpu.core.messages import PROTOCOL_VERSION, Envelope, decode
from meshgpu.core.node import Node
from meshgpu.errors import DecodeError
from tests.core.harness import MeshHarness


def _snapshot(node: Node) -> tuple[Any, ...]:
    return (
        node.members(),
        node.incarnation,
        node.view,
        node.leader(),
        node.loads(),
        node.next_deadline(),
        len(node.context.member_queue),
        len(node.context.update_queue),
    )


def _settled_node() -> Node:
    harness = MeshHarness(4, seed=11)
    harness.run_until(3.0)
    return harness.nodes["n001"]


NODE = _settled_node()
HARNESS = MeshHarness(3, seed=5)
HARNESS.run_until(2.0)
SENT = [effect.payload for _, _, effect in HARNESS.log if hasattr(effect, "payload")]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=4)
    | st.floats(allow_nan=True)
)
msgpack_values = scalars | st.lists(scalars | st.lists(scalars, max_size=5), max_size=6)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1600))
def test_arbitrary_bytes_change_nothing_and_are_counted(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        pass
    else:  # pragma: no cover - random bytes essentially never form a valid envelope
        return
    before = _snapshot(NODE)
    rejected = NODE.counters.get("datagrams_rejected", 0)
    effects = NODE.handle(DatagramReceived(("10.9.9.9", 1), data), now=3.0)
    assert effects == []
    assert _snapshot(NODE) == before
    assert NODE.counters["datagrams_rejected"] == rejected + 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(msgpack_values, min_size=0, max_size=7),
    st.booleans(),
)
def test_structured_garbage_decodes_or_raises_decode_error_only(
    fields: list[Any], fix_version: bool
) -> None:
    if fix_version and fields:
        fields[0] = PROTOCOL_VERSION
    data = msgpack.packb(fields, use_bin_type=True)
    try:
        envelope = decode(data)
    except DecodeError:
        return
    assert isinstance(envelope, Envelope)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 2**32))
def test_corrupted_real_datagrams_never_raise(noise: bytes, seed: int) -> None:
    """Flip bytes in genuine datagrams: whatever decodes is valid, the rest is counted."""
    rng = random.Random(seed)
    data = bytearray(rng.choice(SENT))
    for byte in noise[:8]:
        data[rng.randrange(len(data))] = byte
    node = HARNESS.nodes["n002"]
    try:
        node.handle(DatagramReceived(("10.9.9.9", 1), bytes(data)), now=1.0)
    except Exception as exc:  # pragma: no cover - the property under test
        raise AssertionError(f"handle raised {exc!r} on {bytes(data)!r}") from exc


def test_unknown_sender_gets_a_stateless_ack_and_changes_no_membership() -> None:
    from meshgpu.core.membership.wire import Ack, Ping
    from meshgpu.core.messages import encode

    node = Node("me", ("10.0.0.1", 1), MeshConfig(), random.Random(1), 0.0)
    members_before = node.members()
    data = encode(Envelope("stranger", 0, 0, Ping(5, "me")))
    effects = node.handle(DatagramReceived(("10.0.0.9", 9), data), now=0.0)
    replies = [decode(e.payload) for e in effects if hasattr(e, "payload")]
    assert any(r.body == Ack(5) for r in replies)
    assert node.members() == members_before
    assert node.counters["datagrams_unknown_sender"] == 1
