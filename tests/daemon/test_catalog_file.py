"""The catalog kept in the data dir (daemon/catalog_file.py): what a node held comes back
after a restart, removals included, and merges with the mesh by last writer wins."""

from __future__ import annotations

from pathlib import Path

import trio

from meshgpu.core.catalog import Batching, Catalog, CatalogUpdate
from meshgpu.daemon.catalog import SHIPPED
from meshgpu.daemon.catalog_file import CATALOG_NAME, CatalogFile, CatalogKeeper
from meshgpu.daemon.runtime import Daemon
from tests.daemon.test_runtime import settings

A = "a" * 64
B = "b" * 64


class Context:
    """What the catalog component needs of its node: an id, broadcasts, counters."""

    node_id = "n-b"

    def __init__(self) -> None:
        self.broadcasts: list[object] = []

    def broadcast(self, key: object, update: object) -> None:
        self.broadcasts.append(update)

    def count(self, name: str) -> None:
        pass


def test_the_file_keeps_updates_removals_and_batching(tmp_path: Path) -> None:
    file = CatalogFile(tmp_path)
    updates = {
        "kept": CatalogUpdate("kept", A, 2, 7, "n-a", Batching(8, 500)),
        "gone": CatalogUpdate("gone", "", 1, 9, "n-c"),
    }
    file.save(updates)
    assert {u.name: u for u in CatalogFile(tmp_path).load()} == updates


def test_an_unreadable_file_is_set_aside_not_fatal(tmp_path: Path) -> None:
    (tmp_path / CATALOG_NAME).write_text('{"updates": [["bad name!", "", 1, 1, "x"]]}')
    assert CatalogFile(tmp_path).load() == ()
    assert (tmp_path / (CATALOG_NAME + ".bad")).exists()
    assert not (tmp_path / CATALOG_NAME).exists()


def test_restored_updates_merge_by_last_writer_wins() -> None:
    catalog = Catalog(Context())  # type: ignore[arg-type]
    catalog.change("m", A)  # clock 1 here
    newer_elsewhere = CatalogUpdate("m", B, 2, 5, "n-a")
    older = CatalogUpdate("m", B, 1, 0, "n-a")
    catalog.restore((older,))
    assert catalog.entries()["m"].digest == A  # the restored copy was older
    catalog.restore((newer_elsewhere, CatalogUpdate("x", "", 1, 3, "n-a")))
    assert catalog.entries()["m"].digest == B
    assert "x" not in catalog.entries() and "x" in catalog.updates  # the tombstone kept
    assert catalog.clock == 5  # the next change here is ordered after what it restored


def test_the_keeper_writes_only_changes(tmp_path: Path) -> None:
    held: dict[str, CatalogUpdate] = {}
    keeper = CatalogKeeper(CatalogFile(tmp_path), lambda: held)
    assert keeper.restored() == ()
    assert not keeper.save_if_changed()
    held["m"] = CatalogUpdate("m", A, 1, 1, "n-a")
    assert keeper.save_if_changed()
    assert not keeper.save_if_changed()
    assert CatalogFile(tmp_path).load() == (held["m"],)


async def test_a_restarted_node_keeps_its_registered_models(tmp_path: Path) -> None:
    data_dir = tmp_path / "solo"
    data = SHIPPED["digits"].read_bytes()
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(settings(data_dir)).run)
        digest = daemon.models.put(data)
        await daemon.model_catalog.set("kept", digest)
        await daemon.model_catalog.set("dropped", digest)
        daemon.model_catalog.remove("dropped")
        daemon.request_stop()
    assert (data_dir / CATALOG_NAME).exists()
    async with trio.open_nursery() as nursery:
        again: Daemon = await nursery.start(Daemon(settings(data_dir)).run)
        names = again.model_catalog.names()
        assert names["kept"] == (digest, 1)
        assert "dropped" not in names
        assert again.node.model_catalog.updates["dropped"].removed
        again.request_stop()
