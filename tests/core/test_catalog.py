"""The model catalog (core/catalog.py) through the deterministic core harness: changes
reach every node through gossip, loss and partitions; concurrent writes to one name end
the same everywhere (last writer wins by Lamport clock, then node id); a removal is
ordered like a write; a node that starts later gets the whole catalog by push-pull; and
nothing malformed from the wire is accepted."""

from __future__ import annotations

import msgpack
import pytest

from meshgpu.core.catalog import Batching, CatalogEntry, CatalogUpdate, check_name
from meshgpu.core.events import CatalogChange, PeerDiscovered
from meshgpu.errors import DecodeError
from tests.core.harness import MeshHarness

A = "a" * 64
B = "b" * 64
C = "c" * 64


def catalogs(mesh: MeshHarness) -> list[dict[str, CatalogEntry]]:
    return [mesh.nodes[n].catalog() for n in mesh.live()]


def settled(mesh: MeshHarness, seconds: float = 30.0) -> list[dict[str, CatalogEntry]]:
    mesh.run_until(mesh.now + seconds)
    return catalogs(mesh)


def joined(mesh: MeshHarness) -> None:
    """Run until every node is in the mesh (a lost join datagram is sent again)."""
    first = mesh.nodes["n000"]
    for _ in range(20):
        mesh.run_until(mesh.now + 10)
        if mesh.views_agree():
            return
        for node_id in mesh.live():
            if len(mesh.nodes[node_id].live_members()) == 1:
                mesh.deliver_event(node_id, PeerDiscovered(first.address, first.node_id))
    raise AssertionError("the mesh did not form")


def test_an_empty_catalog_is_empty_everywhere() -> None:
    mesh = MeshHarness(5)
    assert all(c == {} for c in settled(mesh, 10))


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_a_change_reaches_every_node(loss: float) -> None:
    mesh = MeshHarness(12, loss=loss, seed=3)
    joined(mesh)
    mesh.deliver_event("n005", CatalogChange("resnet", A))
    result = settled(mesh, 60)
    assert all(c == {"resnet": CatalogEntry(A, 1)} for c in result), result
    mesh.deliver_event("n009", CatalogChange("resnet", B))  # a new digest: version 2
    assert all(c == {"resnet": CatalogEntry(B, 2)} for c in settled(mesh, 60))
    mesh.deliver_event("n001", CatalogChange("resnet", None))
    assert all(c == {} for c in settled(mesh, 60))


def test_concurrent_writes_to_one_name_converge_to_one_winner() -> None:
    mesh = MeshHarness(6, seed=5)
    mesh.run_until(10)
    for index, digest in ((1, A), (2, B), (4, C)):  # same instant, no gossip in between
        mesh.deliver_event(f"n{index:03d}", CatalogChange("model", digest))
    result = settled(mesh, 60)
    assert len({tuple(c.items()) for c in result}) == 1
    # Equal clocks: the highest node id wins, the same on every node.
    assert result[0] == {"model": CatalogEntry(C, 1)}


def test_a_partitioned_side_catches_up_when_healed() -> None:
    mesh = MeshHarness(8, seed=7)
    mesh.run_until(10)
    for node_id in mesh.live()[:3]:
        mesh.groups[node_id] = 1
    mesh.deliver_event("n000", CatalogChange("left-side", A))
    mesh.deliver_event("n006", CatalogChange("right-side", B))
    mesh.run_until(mesh.now + 20)
    assert "right-side" not in mesh.nodes["n000"].catalog()
    mesh.groups.clear()
    want = {"left-side": CatalogEntry(A, 1), "right-side": CatalogEntry(B, 1)}
    assert all(c == want for c in settled(mesh, 120))


def test_a_node_started_later_gets_the_catalog_by_push_pull() -> None:
    mesh = MeshHarness(4, seed=9)
    mesh.run_until(10)
    mesh.deliver_event("n002", CatalogChange("digits-v2", A))
    mesh.deliver_event("n003", CatalogChange("gone", B))
    mesh.deliver_event("n003", CatalogChange("gone", None))
    mesh.run_until(60)  # long after the gossip's retransmissions ended
    late = mesh.add_node("n900")
    first = mesh.nodes["n000"]
    mesh.deliver_event("n900", PeerDiscovered(first.address, first.node_id))
    mesh.run_until(mesh.now + 20)
    assert late.catalog() == {"digits-v2": CatalogEntry(A, 1)}
    assert late.model_catalog.updates["gone"].removed  # the tombstone came too


def test_same_digest_again_and_removing_nothing_change_nothing() -> None:
    mesh = MeshHarness(1)
    node = mesh.nodes["n000"]
    mesh.deliver_event("n000", CatalogChange("m", A))
    clock = node.model_catalog.clock
    mesh.deliver_event("n000", CatalogChange("m", A))
    mesh.deliver_event("n000", CatalogChange("absent", None))
    assert node.model_catalog.clock == clock
    assert node.catalog() == {"m": CatalogEntry(A, 1)}


def test_batching_settings_travel_with_the_name_and_a_new_setting_keeps_the_version() -> None:
    mesh = MeshHarness(4, seed=11)
    joined(mesh)
    mesh.deliver_event("n001", CatalogChange("squeeze", A, Batching(16, 2000)))
    want = CatalogEntry(A, 1, Batching(16, 2000))
    assert all(c == {"squeeze": want} for c in settled(mesh, 60))
    mesh.deliver_event("n002", CatalogChange("squeeze", A, Batching(4, 0)))
    assert all(c == {"squeeze": CatalogEntry(A, 1, Batching(4, 0))} for c in settled(mesh, 60))
    clock = mesh.nodes["n002"].model_catalog.clock
    mesh.deliver_event("n002", CatalogChange("squeeze", A, Batching(4, 0)))  # the same again
    assert mesh.nodes["n002"].model_catalog.clock == clock


def test_an_update_without_batching_keeps_its_five_fields() -> None:
    """A catalog that sets no batching keeps the bytes it had before batching existed."""
    assert len(CatalogUpdate("m", A, 1, 1, "n000").to_fields()) == 5
    with_settings = CatalogUpdate("m", A, 1, 1, "n000", Batching(8, 0))
    assert roundtrip(with_settings) == with_settings


def roundtrip(update: CatalogUpdate) -> CatalogUpdate:
    return CatalogUpdate.from_fields(msgpack.unpackb(msgpack.packb(update.to_fields())))


def test_malformed_updates_are_refused_at_decode() -> None:
    good = CatalogUpdate("m", A, 1, 1, "n000")
    assert roundtrip(good) == good
    for bad in (
        CatalogUpdate("../etc", A, 1, 1, "n000"),
        CatalogUpdate("m", "xyz", 1, 1, "n000"),
        CatalogUpdate("m", A, -1, 1, "n000"),
        CatalogUpdate("", A, 1, 1, "n000"),
    ):
        with pytest.raises(DecodeError):
            roundtrip(bad)
    for fields in (
        ["m", A, 1, 1, "n000", [0, 0]],  # max_batch below 1
        ["m", A, 1, 1, "n000", [8, -1]],
        ["m", A, 1, 1, "n000", [8]],
        ["m", A, 1, 1, "n000", [8, 0], "extra"],
    ):
        with pytest.raises(DecodeError):
            CatalogUpdate.from_fields(fields)
    with pytest.raises(ValueError):
        Batching(2000, 0)


def test_names_are_checked() -> None:
    assert check_name("resnet-50_v1.2") == "resnet-50_v1.2"
    for bad in ("", "a/b", ".hidden", "x" * 65, "sp ace"):
        with pytest.raises(ValueError):
            check_name(bad)
