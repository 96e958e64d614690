"""ModelCatalog alone: a dict for the node's catalog, a fake model store, a list of fed
events. (The catalog ops through real daemons are in tests/integration.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from meshgpu.core.catalog import Batching, CatalogEntry
from meshgpu.core.events import CatalogChange
from meshgpu.daemon.batching import DEFAULT_BATCHING
from meshgpu.daemon.catalog import SHIPPED, ModelCatalog, batching_of_request, shipped_digests
from meshgpu.errors import DecodeError, ModelError, TaskError


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
            version = 1 if old is None else old.version + (old.digest != change.digest)
            self.entries[change.name] = CatalogEntry(change.digest, version, change.batching)


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
    # digits has a free batch dimension: it gets the default batching settings.
    assert answer == {
        "name": "my-digits",
        "digest": digest,
        "version": 1,
        "max_batch": DEFAULT_BATCHING.max_batch,
        "max_delay_ms": 0.0,
    }
    assert node.fed == [CatalogChange("my-digits", digest, DEFAULT_BATCHING)]
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


async def test_set_takes_batching_settings_and_the_rows_show_them(tmp_path: Path) -> None:
    digest = hashlib.sha256(SHIPPED["digits"].read_bytes()).hexdigest()
    catalog, _ = build(tmp_path, {digest: SHIPPED["digits"]})
    answer = await catalog.set("d16", digest, max_batch=16, max_delay_us=2000)
    assert (answer["max_batch"], answer["max_delay_ms"]) == (16, 2.0)
    rows = {row["name"]: row for row in catalog.rows()}
    assert (rows["d16"]["max_batch"], rows["d16"]["max_delay_ms"]) == (16, 2.0)
    assert rows["digits"]["max_batch"] == DEFAULT_BATCHING.max_batch  # shipped: the default
    assert catalog.batching_for(digest) == Batching(16, 2000)
    assert catalog.batching_for("e" * 64) is None  # not in the catalog: the worker decides
    with pytest.raises(DecodeError, match="max_batch"):
        await catalog.set("d16", digest, max_batch=0)


async def test_a_fixed_first_dimension_cannot_be_asked_to_batch(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    catalog, _ = build(tmp_path, {digest: path})
    with pytest.raises(TaskError, match="cannot batch"):
        await catalog.set("fixed", digest, max_batch=16)
    answer = await catalog.set("fixed", digest)  # without: batching off
    assert answer["max_batch"] == 1


def test_catalog_set_request_fields_are_checked() -> None:
    assert batching_of_request(None, None) == (None, None)
    assert batching_of_request(16, 2.5) == (16, 2500)
    for bad in (("16", None), (True, None), (None, "2"), (None, False)):
        with pytest.raises(DecodeError):
            batching_of_request(*bad)


async def test_a_model_with_external_weights_is_refused(tmp_path: Path) -> None:
    # A model travels as its one .onnx file: external weights are on no node, so every
    # run of a catalog entry pointing at it would fail.
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[weights]
    )
    path = tmp_path / "external.onnx"
    onnx.save_model(helper.make_model(graph), path, save_as_external_data=True, size_threshold=0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    catalog, node = build(tmp_path, {digest: path})
    with pytest.raises(ModelError, match="external data files"):
        await catalog.set("external", digest)
    assert node.fed == []
