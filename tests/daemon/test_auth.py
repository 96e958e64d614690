"""The envelope: authentication, replay window, freshness, channels, twins."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshgpu.daemon.auth import Authenticator, Channel, MeshKey, load_mesh_key
from meshgpu.daemon.auth.handshake import VERSION
from meshgpu.errors import AuthenticationError, ConfigError, DecodeError, IncompatiblePeerError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> MeshKey:
    return MeshKey.generate()


def test_keyed_roundtrip_names_sender_and_payload(key: MeshKey) -> None:
    alice, bob = Authenticator(key, "alice"), Authenticator(key, "bob")
    sealer = alice.new_session(Channel.DATAGRAM)
    envelope = bob.open(sealer.seal(b"hello"), Channel.DATAGRAM)
    assert (envelope.sender, envelope.payload, envelope.from_self) == ("alice", b"hello", False)
    assert envelope.session == sealer.session


def test_wrong_key_is_refused_and_counted(key: MeshKey) -> None:
    alice = Authenticator(key, "alice")
    mallory = Authenticator(MeshKey.generate(), "mallory")
    data = mallory.new_session(Channel.DATAGRAM).seal(b"join me")
    with pytest.raises(AuthenticationError, match="wrong mesh key"):
        alice.open(data, Channel.DATAGRAM)
    assert alice.counters["bad_tag"] == 1
    assert alice.counters["rejected"] == 1


def test_unkeyed_sender_is_refused_by_keyed_node(key: MeshKey) -> None:
    keyed = Authenticator(key, "alice")
    data = Authenticator(None, "open-node").new_session(Channel.DATAGRAM).seal(b"x")
    with pytest.raises(AuthenticationError, match="without a mesh key"):
        keyed.open(data, Channel.DATAGRAM)
    assert keyed.counters["unauthenticated"] == 1


def test_open_node_refuses_keyed_peer_with_a_hint(key: MeshKey) -> None:
    data = Authenticator(key, "alice").new_session(Channel.DATAGRAM).seal(b"x")
    with pytest.raises(AuthenticationError, match="--key-file"):
        Authenticator(None, "open-node").open(data, Channel.DATAGRAM)


def test_every_flipped_bit_is_refused(key: MeshKey) -> None:
    alice, bob = Authenticator(key, "alice"), Authenticator(key, "bob")
    data = alice.new_session(Channel.DATAGRAM).seal(b"payload")
    for index in range(len(data)):
        altered = bytearray(data)
        altered[index] ^= 0x01
        with pytest.raises((AuthenticationError, DecodeError)):
            bob.open(bytes(altered), Channel.DATAGRAM)


@pytest.mark.parametrize("size", [0, 1000, (8 << 10) - 20, 8 << 10, 300_000])
def test_small_and_large_envelopes_open_and_refuse_alteration(key: MeshKey, size: int) -> None:
    """Small envelopes are sealed and opened with copies, large ones in place (the
    envelope's ``_SMALL``): both ways, and across the boundary, the payload comes back
    and an altered byte of header, ciphertext or tag is refused."""
    alice, bob = Authenticator(key, "alice"), Authenticator(key, "bob")
    payload = os.urandom(size)
    frames = alice.new_session(Channel.FRAME)
    assert bob.open(frames.seal(payload), Channel.FRAME).payload == payload
    (pieces,) = frames.seal_pieces([payload[:7], memoryview(payload)[7:]])
    assert bytes(bob.open(pieces, Channel.FRAME, as_view=True).payload) == payload
    data = bytes(frames.seal(payload))
    for index in (5, len(data) // 2, len(data) - 1):
        altered = bytearray(data)
        altered[index] ^= 0x80
        with pytest.raises((AuthenticationError, DecodeError)):
            bob.open(altered, Channel.FRAME, as_view=True)


def test_replay_is_refused_but_reordering_is_not(key: MeshKey) -> None:
    alice, bob = Authenticator(key, "alice"), Authenticator(key, "bob")
    sealer = alice.new_session(Channel.DATAGRAM)
    first, second, third = (sealer.seal(bytes([n])) for n in range(3))
    bob.open(third, Channel.DATAGRAM)
    bob.open(first, Channel.DATAGRAM)  # late but new: accepted
    with pytest.raises(AuthenticationError, match="replayed"):
        bob.open(first, Channel.DATAGRAM)
    bob.open(second, Channel.DATAGRAM)
    with pytest.raises(AuthenticationError, match="replayed"):
        bob.open(third, Channel.DATAGRAM)
    assert bob.counters["replayed"] == 2


def test_counter_older_than_window_is_refused(key: MeshKey) -> None:
    alice, bob = Authenticator(key, "alice"), Authenticator(key, "bob", window=8)
    sealer = alice.new_session(Channel.DATAGRAM)
    sealed = [sealer.seal(b"x") for _ in range(10)]
    bob.open(sealed[9], Channel.DATAGRAM)
    with pytest.raises(AuthenticationError, match="window"):
        bob.open(sealed[0], Channel.DATAGRAM)
    bob.open(sealed[2], Channel.DATAGRAM)


def test_stale_envelope_is_refused_even_by_a_fresh_receiver(key: MeshKey) -> None:
    clock = FakeClock()
    data = Authenticator(key, "alice", clock=clock).new_session(Channel.DATAGRAM).seal(b"x")
    clock.now += 121
    restarted = Authenticator(key, "bob", clock=clock, max_clock_skew=120)
    with pytest.raises(AuthenticationError, match="NTP"):
        restarted.open(data, Channel.DATAGRAM)
    assert restarted.counters["stale"] == 1


def test_datagram_cannot_be_used_as_frame(key: MeshKey) -> None:
    data = Authenticator(key, "alice").new_session(Channel.DATAGRAM).seal(b"x")
    with pytest.raises(DecodeError, match="channel"):
        Authenticator(key, "bob").open(data, Channel.FRAME)


def test_own_session_is_marked_from_self(key: MeshKey) -> None:
    alice = Authenticator(key, "alice")
    sealer = alice.new_session(Channel.DATAGRAM)
    assert alice.open(sealer.seal(b"x"), Channel.DATAGRAM).from_self
    twin = Authenticator(key, "alice")  # same id, another process
    assert not alice.open(twin.new_session(Channel.DATAGRAM).seal(b"x"), Channel.DATAGRAM).from_self


@pytest.mark.parametrize("garbage", [b"", b"M", b"GET / HTTP/1.1\r\n", os.urandom(200)])
def test_garbage_is_a_decode_error(key: MeshKey, garbage: bytes) -> None:
    bob = Authenticator(key, "bob")
    with pytest.raises((DecodeError, AuthenticationError)):
        bob.open(garbage, Channel.DATAGRAM)
    assert bob.counters["rejected"] == 1


def test_overhead_matches_sealed_size(key: MeshKey) -> None:
    for k in (key, None):
        alice = Authenticator(k, "n-0011aabb")
        assert len(alice.new_session(Channel.DATAGRAM).seal(b"abc")) == 3 + alice.overhead()


def test_key_file_roundtrip_is_private(tmp_path: Path, key: MeshKey) -> None:
    path = tmp_path / "mesh.key"
    key.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_mesh_key(path, {}) == key
    assert load_mesh_key(None, {"MESHGPU_KEY": key.secret.hex()}) == key
    assert load_mesh_key(None, {}) is None
    assert load_mesh_key(path, {"MESHGPU_KEY": MeshKey.generate().secret.hex()}) == key


def test_bad_key_material_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="meshgpu keygen"):
        load_mesh_key(None, {"MESHGPU_KEY": "not hex"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_mesh_key(tmp_path / "missing", {})
    with pytest.raises(ConfigError, match="32"):
        load_mesh_key(None, {"MESHGPU_KEY": "abcd"})


def test_keyed_envelope_hides_payload_sender_stays_readable(key: MeshKey) -> None:
    secret = b"patient-record-0042 " * 8
    sealed = bytes(Authenticator(key, "alice", mesh="lab").new_session(Channel.FRAME).seal(secret))
    assert b"patient-record" not in sealed
    assert b"alice" not in sealed  # the sender is encrypted too
    assert b"lab" in sealed  # the mesh name is in clear, but authenticated
    opened = Authenticator(key, "bob", mesh="lab").open(sealed, Channel.FRAME)
    assert opened.payload == secret


def test_open_envelope_carries_payload_in_clear() -> None:
    sealed = bytes(Authenticator(None, "alice").new_session(Channel.FRAME).seal(b"in the clear"))
    assert b"in the clear" in sealed


def test_altered_mesh_name_fails_authentication(key: MeshKey) -> None:
    sealed = bytearray(
        Authenticator(key, "alice", mesh="lab").new_session(Channel.DATAGRAM).seal(b"x")
    )
    at = sealed.index(b"lab")
    sealed[at : at + 3] = b"lob"
    bob = Authenticator(key, "bob", mesh="lob")
    with pytest.raises(AuthenticationError, match="fails authentication"):
        bob.open(bytes(sealed), Channel.DATAGRAM)
    assert bob.counters["bad_tag"] == 1


@pytest.mark.parametrize("keyed", [True, False])
def test_other_mesh_is_refused_naming_both(key: MeshKey, keyed: bool) -> None:
    secret = key if keyed else None
    sealed = Authenticator(secret, "alice", mesh="physics").new_session(Channel.DATAGRAM).seal(b"x")
    bob = Authenticator(secret, "bob", mesh="chemistry")
    with pytest.raises(IncompatiblePeerError, match=r"'physics'.*'chemistry'"):
        bob.open(sealed, Channel.DATAGRAM)
    assert bob.counters["other_mesh"] == 1


def test_client_without_mesh_name_reaches_daemon_on_frames_only(key: MeshKey) -> None:
    client = Authenticator(key, "client-1").new_session
    daemon = Authenticator(key, "node", mesh="lab")
    assert daemon.open(client(Channel.FRAME).seal(b"hi"), Channel.FRAME).payload == b"hi"
    with pytest.raises(IncompatiblePeerError, match="mesh ''"):
        daemon.open(client(Channel.DATAGRAM).seal(b"hi"), Channel.DATAGRAM)


def test_other_protocol_version_is_refused_naming_both(key: MeshKey) -> None:
    sealed = bytearray(Authenticator(key, "alice").new_session(Channel.DATAGRAM).seal(b"x"))
    sealed[2] = 1
    with pytest.raises(DecodeError, match=f"protocol version 1, this node speaks {VERSION}"):
        Authenticator(key, "bob").open(bytes(sealed), Channel.DATAGRAM)


def test_counter_wrap_starts_a_fresh_session_never_reusing_a_nonce(key: MeshKey) -> None:
    alice, bob = Authenticator(key, "alice"), Authenticator(key, "bob")
    sealer = alice.new_session(Channel.DATAGRAM)
    first = sealer.session
    sealer._counter = (1 << 32) - 1
    last = bob.open(sealer.seal(b"a"), Channel.DATAGRAM)
    wrapped = bob.open(sealer.seal(b"b"), Channel.DATAGRAM)
    assert (last.session, last.counter) == (first, (1 << 32) - 1)
    assert wrapped.session != first and wrapped.counter == 0
    assert alice.open(sealer.seal(b"c"), Channel.DATAGRAM).from_self


def test_refusal_names_both_meshes_but_no_node(key: MeshKey) -> None:
    alice = Authenticator(key, "alice", mesh="physics")
    bob = Authenticator(key, "bob", mesh="chemistry")
    with pytest.raises(IncompatiblePeerError) as refused:
        bob.open(alice.new_session(Channel.DATAGRAM).seal(b"x"), Channel.DATAGRAM, ("10.0.0.1", 1))
    assert bob.refused["10.0.0.1:1"]["address"] == ["10.0.0.1", 1]
    refusal = bob.refusal(Channel.DATAGRAM, refused.value)
    assert b"alice" not in refusal and b"bob" not in refusal
    with pytest.raises(IncompatiblePeerError, match="refuses this node") as told:
        alice.open(refusal, Channel.DATAGRAM, ("10.0.0.2", 2))
    assert told.value.reason == "refused_by_peer"
    assert "'physics'" in str(told.value) and "'chemistry'" in str(told.value)
    assert alice.counters["refused_by_peer"] == 1
