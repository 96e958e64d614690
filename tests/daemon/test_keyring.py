"""The keyring: operations, the primary's protection, merging, persistence, and what the
envelope does with several keys (auth/keyring.py, auth/envelope.py)."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgpu.daemon.auth import KEYRING_FILE, Authenticator, Channel, Keyring, MeshKey
from meshgpu.errors import AuthenticationError, DecodeError, IncompatiblePeerError, KeyringError

K1, K2, K3 = MeshKey.generate(), MeshKey.generate(), MeshKey.generate()


def ring(*keys: MeshKey) -> Keyring:
    keyring = Keyring.single(keys[0])
    for key in keys[1:]:
        keyring.install(key)
    return keyring


def test_install_use_remove() -> None:
    keyring = ring(K1)
    assert keyring.install(K2) is True
    assert keyring.install(K2) is False  # installing twice changes nothing
    assert keyring.primary == K1
    keyring.use(K2.fingerprint[:6], "n-a")
    assert keyring.primary == K2
    keyring.remove(K1.fingerprint)
    assert [k.fingerprint for k in keyring.installed()] == [K2.fingerprint]
    assert keyring.summary()["removed"].keys() == {K1.fingerprint}


def test_removing_the_primary_is_refused_with_what_to_do() -> None:
    keyring = ring(K1, K2)
    with pytest.raises(KeyringError, match=r"is the primary key .* `meshgpu keyring use`"):
        keyring.remove(K1.fingerprint)
    assert keyring.primary == K1
    assert len(keyring.installed()) == 2


def test_a_removed_key_cannot_be_installed_again_nor_used() -> None:
    keyring = ring(K1, K2)
    keyring.remove(K2.fingerprint)
    with pytest.raises(KeyringError, match=r"removed .* cannot be installed again"):
        keyring.install(K2)
    with pytest.raises(KeyringError, match="was removed"):
        keyring.use(K2.fingerprint, "n-a")


@pytest.mark.parametrize("text", ["", "ab", "zzzzzz"])
def test_a_key_is_named_by_an_unambiguous_fingerprint_prefix(text: str) -> None:
    with pytest.raises(KeyringError):
        ring(K1, K2).resolve(text)


def test_merge_carries_install_use_and_remove_to_a_replica() -> None:
    a, b = ring(K1), ring(K1)
    a.install(K2)
    a.use(K2.fingerprint, "n-a")
    a.remove(K1.fingerprint)
    assert b.merge(a.to_wire()) is True
    assert b.summary() == a.summary()
    assert b.merge(a.to_wire()) is False  # idempotent
    assert b.ciphers.keys() == {K2.key_id}


def test_a_stale_replica_cannot_undo_a_removal() -> None:
    """A node that was down and ran operations of its own (a higher counter) still loses
    the removed key when it merges, and the mesh does not get it back from it."""
    mesh, stale = ring(K1), ring(K1)
    mesh.install(K2)
    mesh.use(K2.fingerprint, "n-a")
    mesh.remove(K1.fingerprint)
    for _ in range(5):  # the stale node flips its primary often: a high Lamport counter
        stale.install(K3)
        stale.use(K3.fingerprint, "n-z")
        stale.use(K1.fingerprint, "n-z")
    mesh.merge(stale.to_wire())
    stale.merge(mesh.to_wire())
    assert mesh.summary() == stale.summary()
    assert K1.fingerprint not in mesh.summary()["keys"]
    assert mesh.primary is not None and mesh.primary.fingerprint != K1.fingerprint


operations = st.lists(
    st.tuples(
        st.integers(0, 2), st.sampled_from(["install", "use", "remove", "merge"]), st.integers(0, 3)
    ),
    max_size=30,
)


@given(operations)
@settings(max_examples=150, deadline=None)
def test_replicas_converge_whatever_the_order(ops: list[tuple[int, str, int]]) -> None:
    """Three replicas run random operations and partial merges; after everyone merges
    with everyone, they are equal, hold a primary that is installed, and no removed key."""
    keys = [K1, K2, K3, MeshKey(bytes(range(32)))]
    replicas = [ring(K1) for _ in range(3)]
    for who, op, which in ops:
        replica, key = replicas[who], keys[which]
        try:
            if op == "install":
                replica.install(key)
            elif op == "use":
                replica.use(key.fingerprint, f"n-{who}")
            elif op == "remove":
                replica.remove(key.fingerprint)
            else:
                replica.merge(replicas[which % 3].to_wire())
        except KeyringError:
            pass  # refused locally (the primary, a removed or unknown key): nothing changed
    for _ in range(2):
        for a in replicas:
            for b in replicas:
                a.merge(b.to_wire())
    summaries = [replica.summary() for replica in replicas]
    assert summaries[0] == summaries[1] == summaries[2]
    removed = set(summaries[0]["removed"])
    assert not removed & set(summaries[0]["keys"])
    if summaries[0]["primary"] is not None:
        assert summaries[0]["primary"] in summaries[0]["keys"]


@pytest.mark.parametrize(
    "wire",
    [
        None,
        {"keys": [b"short"], "primary": None, "stamp": [0, ""], "removed": {}},
        {"keys": [], "primary": "abcdefabcdef", "stamp": [0, ""], "removed": {}},
        {"keys": [], "primary": None, "stamp": "x", "removed": {}},
        {"keys": [], "primary": None, "stamp": [0, ""], "removed": {"x": "y"}},
    ],
)
def test_a_malformed_pushed_keyring_is_refused_and_changes_nothing(wire: object) -> None:
    keyring = ring(K1)
    before = keyring.summary()
    with pytest.raises(DecodeError):
        keyring.merge(wire)
    assert keyring.summary() == before


def test_the_keyring_is_kept_in_the_data_dir_across_restarts(tmp_path: Path) -> None:
    first = Keyring.for_node(tmp_path, K1, "n-a")
    first.install(K2)
    first.use(K2.fingerprint, "n-a")
    first.remove(K1.fingerprint)
    path = tmp_path / KEYRING_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert K2.secret.hex() in path.read_text()
    # Restarted with the key file it was first given: the keyring wins, K1 stays removed.
    again = Keyring.for_node(tmp_path, K1, "n-a")
    assert again.summary() == first.summary()
    # Without a key file: still keyed, from the keyring.
    assert Keyring.for_node(tmp_path, None, "n-a").primary == K2


def test_a_new_key_given_at_start_becomes_primary(tmp_path: Path) -> None:
    Keyring.for_node(tmp_path, K1, "n-a")
    restarted = Keyring.for_node(tmp_path, K2, "n-a")
    assert restarted.primary == K2
    assert {k.fingerprint for k in restarted.installed()} == {K1.fingerprint, K2.fingerprint}


def test_no_key_and_no_keyring_is_an_open_node_and_writes_nothing(tmp_path: Path) -> None:
    keyring = Keyring.for_node(tmp_path, None, "n-a")
    assert not keyring.keyed
    assert not (tmp_path / KEYRING_FILE).exists()


def test_an_unreadable_keyring_says_how_to_recover(tmp_path: Path) -> None:
    (tmp_path / KEYRING_FILE).write_text(json.dumps({"format": 1}))
    with pytest.raises(KeyringError, match="delete it and start with --key-file"):
        Keyring.for_node(tmp_path, None, "n-a")


# --- the envelope with a keyring ---------------------------------------------------


def test_every_installed_key_opens_only_the_primary_seals() -> None:
    old_node = Authenticator(ring(K1, K2), "n-old")  # K1 primary
    new_node_ring = ring(K1, K2)
    new_node_ring.use(K2.fingerprint, "n-new")
    new_node = Authenticator(new_node_ring, "n-new")
    sealed_new = new_node.new_session(Channel.DATAGRAM).seal(b"from new")
    sealed_old = old_node.new_session(Channel.DATAGRAM).seal(b"from old")
    assert old_node.open(sealed_new, Channel.DATAGRAM).key_id == K2.key_id
    assert new_node.open(sealed_old, Channel.DATAGRAM).key_id == K1.key_id
    assert K2.key_id in sealed_new[:40] and K1.key_id not in sealed_new[:40]


def test_a_peer_on_another_key_is_reported_once_per_envelope() -> None:
    heard: list[object] = []
    receiver = Authenticator(ring(K1, K2), "n-b")
    receiver.on_other_key = lambda source, key_id: heard.append((source, key_id))
    sender = Authenticator(ring(K2, K1), "n-a")  # K2 primary
    receiver.open(sender.new_session(Channel.DATAGRAM).seal(b"x"), Channel.DATAGRAM, ("h", 1))
    stranger = Authenticator(K3, "n-c")
    with pytest.raises(AuthenticationError, match="sealed with key"):
        receiver.open(stranger.new_session(Channel.DATAGRAM).seal(b"x"), Channel.DATAGRAM, ("h", 2))
    assert heard == [(("h", 1), K2.key_id), (("h", 2), K3.key_id)]


def test_a_removed_key_is_refused_naming_it_and_the_current_primary() -> None:
    mesh = ring(K1, K2)
    mesh.use(K2.fingerprint, "n-a")
    mesh.remove(K1.fingerprint)
    node = Authenticator(mesh, "n-a", mesh="lab")
    stale = Authenticator(K1, "n-stale", mesh="lab")
    with pytest.raises(IncompatiblePeerError, match="was removed") as refused:
        node.open(stale.new_session(Channel.DATAGRAM).seal(b"x"), Channel.DATAGRAM, ("10.0.0.9", 7))
    message = str(refused.value)
    assert K1.fingerprint in message and K2.fingerprint in message and "--key-file" in message
    assert node.refused["10.0.0.9:7"]["reason"] == message
    # The stale node reads the refusal it is sent and keeps the reason for its status.
    with pytest.raises(IncompatiblePeerError, match="was removed"):
        stale.open(node.refusal(Channel.DATAGRAM, refused.value), Channel.DATAGRAM)
    assert "was removed" in next(iter(stale.refused.values()))["reason"]


def test_verify_flags_move_an_open_mesh_to_encryption() -> None:
    """Stage 1 (key, both off) talks to open nodes; stage 2 (outgoing on) talks to stage
    1 and 3 nodes; stage 3 (both on) refuses open traffic."""
    open_node = Authenticator(None, "n-open")
    stage1 = Authenticator(K1, "n-1", verify_incoming=False, verify_outgoing=False)
    stage2 = Authenticator(K1, "n-2", verify_incoming=False)
    stage3 = Authenticator(K1, "n-3")
    sealed = {
        node: node.new_session(Channel.DATAGRAM).seal(b"payload")
        for node in (open_node, stage1, stage2, stage3)
    }
    assert b"payload" in sealed[stage1]  # stage 1 still sends in clear
    assert b"payload" not in sealed[stage2]
    for receiver, senders in (
        (open_node, [stage1]),
        (stage1, [open_node, stage2, stage3]),
        (stage2, [open_node, stage1, stage3]),
        (stage3, [stage2]),
    ):
        for sender in senders:
            assert receiver.open(sealed[sender], Channel.DATAGRAM).payload == b"payload"
    with pytest.raises(AuthenticationError, match="without a mesh key"):
        stage3.open(sealed[stage1], Channel.DATAGRAM)


def test_a_pinned_session_seals_with_its_key_while_it_is_installed() -> None:
    keyring = ring(K1, K2)
    node = Authenticator(keyring, "n-a", verify_outgoing=False)
    keyed = node.new_session(Channel.FRAME, keyed=True)  # a keyring exchange
    assert Authenticator(K1, "n-b").open(keyed.seal(b"x"), Channel.FRAME).key_id == K1.key_id
    keyed.key_id = K2.key_id  # the peer's key
    assert Authenticator(K2, "n-b").open(keyed.seal(b"x"), Channel.FRAME).key_id == K2.key_id
    keyring.remove(K2.fingerprint)  # gone: back to the node's policy (clear, here)
    assert b"secret" in keyed.seal(b"secret")


def test_seal_and_open_agree_for_random_keyrings() -> None:
    rng = random.Random(7)
    keys = [MeshKey.generate() for _ in range(4)]
    for _ in range(50):
        chosen = rng.sample(keys, 2)
        a, b = Authenticator(ring(*chosen), "n-a"), Authenticator(ring(*reversed(chosen)), "n-b")
        payload = rng.randbytes(rng.randrange(1, 3000))
        assert b.open(a.new_session(Channel.FRAME).seal(payload), Channel.FRAME).payload == payload


def test_nodes_started_with_one_key_hold_equal_keyrings(tmp_path: Path) -> None:
    """Their first exchange changes nothing (no rewrite of the file, no log line)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Keyring.for_node(tmp_path / "a", K1, "n-a")
    b = Keyring.for_node(tmp_path / "b", K1, "n-b")
    assert a.summary() == b.summary()
    assert a.merge(b.to_wire()) is False


async def test_the_answering_side_answers_in_the_key_of_each_request() -> None:
    """A client on the previous key reads the answers; two nodes that both moved to the
    new key do not keep each other on the old one (only the answering side mirrors)."""
    import trio.testing

    from meshgpu.daemon.framing import FrameStream

    server_ring = ring(K1, K2)
    server_ring.use(K2.fingerprint, "n-s")
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FrameStream(server_stream, Authenticator(server_ring, "n-s"), answering=True)
    old_client = FrameStream(client_stream, Authenticator(ring(K1, K2), "n-c"))  # K1 primary
    await old_client.send({"ask": 1})
    assert await server.receive() == {"ask": 1}
    assert server.peer_key_id == K1.key_id
    await server.send({"answer": 1})
    assert await old_client.receive() == {"answer": 1}
    assert old_client.peer_key_id == K1.key_id  # answered in the client's key
    old_client.authenticator.keyring.use(K2.fingerprint, "n-c")  # the client moves on
    await old_client.send({"ask": 2})
    await server.receive()
    await server.send({"answer": 2})
    await old_client.receive()
    assert (server.peer_key_id, old_client.peer_key_id) == (K2.key_id, K2.key_id)
