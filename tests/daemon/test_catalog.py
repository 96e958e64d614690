"""ModelCatalog alone: a dict for the node's catalog, a fake model store, a list of fed
events. (The catalog ops through real daemons are in tests/integration.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from meshgpu.core.catalog import CatalogEntry
from meshgpu.core.events import CatalogChange
from meshgpu.daemon.catalog import SHIPPED, ModelCatalog, shipped_digests
from meshgpu.errors import DecodeError, TaskError


class Shelf:
    """A model store holding the given digest -> path."""

    def __init__(self, held: dict[str, Path]) -> None:
        self.held = held

    def has(self, digest: str) -> bool:
        return digest in self.held

    def path(self, digest: str) -> Path | None:
        return self.held.get(digest)


class Node:
    """The node's catalog: a fed CatalogChange applies at once, as the core would."""

    def __init__(self) -> None:
        self.entries: dict[str, CatalogEntry] = {}
        self.fed: list[CatalogChange] = []

    def feed(self, change: CatalogChange) -> None:
        self.fed.append(change)
        if change.digest is None:
            self.entries.pop(change.name, None)
        else:
            old = self.entries.get(change.name)
            self.entries[change.name] = CatalogEntry(change.digest, old.version + 1 if old else 1)


def build(tmp_path: Path, held: dict[str, Path] | None = None) -> tuple[ModelCatalog, Node]:
    node = Node()
    return ModelCatalog("n-a", lambda: node.entries, Shelf(held or {}), node.feed), node


def test_names_list_the_shipped_models_first_and_a_shipped_name_cannot_be_replaced(
    tmp_path: Path,
) -> None:
    catalog, node = build(tmp_path)
    node.entries["digits"] = CatalogEntry("f" * 64, 7)  # a replicated name never hides it
    node.entries["resnet"] = CatalogEntry("a" * 64, 2)
    names = catalog.names()
    assert names["digits"] == (shipped_digests()["digits"], 1)
    assert names["resnet"] == ("a" * 64, 2)
    rows = {row["name"]: row for row in catalog.rows()}
    assert rows["digits"]["shipped"] and not rows["resnet"]["shipped"]
    assert not rows["resnet"]["here"]
    with pytest.raises(TaskError, match="shipped"):
        catalog.remove("digits")


async def test_set_names_a_held_readable_model_and_remove_drops_it(tmp_path: Path) -> None:
    data = SHIPPED["digits"].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    catalog, node = build(tmp_path, {digest: SHIPPED["digits"]})
    answer = await catalog.set("my-digits", digest)
    assert answer == {"name": "my-digits", "digest": digest, "version": 1}
    assert node.fed == [CatalogChange("my-digits", digest)]
    assert {row["name"]: row["here"] for row in catalog.rows()}["my-digits"]
    assert catalog.remove("my-digits") == {"name": "my-digits", "removed": True}
    assert catalog.remove("my-digits") == {"name": "my-digits", "removed": False}
    assert node.fed[-1] == CatalogChange("my-digits", None) and len(node.fed) == 2


async def test_set_refuses_a_model_not_held_or_not_onnx_and_bad_names(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph")
    catalog, node = build(tmp_path, {"b" * 64: garbage})
    with pytest.raises(TaskError, match="upload it first"):
        await catalog.set("m", "c" * 64)
    with pytest.raises(DecodeError, match="not a readable ONNX graph"):
        await catalog.set("m", "b" * 64)
    with pytest.raises(DecodeError):
        await catalog.set("bad name/with slash", "b" * 64)
    assert node.fed == []
