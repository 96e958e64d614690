"""The daemon's side of the model catalog (core/catalog.py): the shipped models plus the
replicated names, and the API ops that change it (``meshgpu models``).

:class:`ModelCatalog` is the part: it reads the node's catalog and this node's model store
through what the wiring hands it, and changes the catalog by feeding ``CatalogChange``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import trio

from meshgpu.core.catalog import CatalogEntry, check_name
from meshgpu.core.events import CatalogChange
from meshgpu.daemon.modelstore import check_digest
from meshgpu.errors import DecodeError, MeshError, TaskError

SHIPPED_DIR = Path(__file__).parents[1] / "inference" / "models"
SHIPPED = {"digits": SHIPPED_DIR / "digits.onnx"}
"""Models every node serves by name without being told: their bytes ship with meshgpu."""
SHIPPED_VERSION = 1


@cache
def shipped_digests() -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in SHIPPED.items()}


def _name(name: str) -> str:
    try:
        check_name(name)
    except ValueError as error:
        raise DecodeError(str(error)) from None
    if name in SHIPPED:
        raise TaskError(f"{name!r} is a model shipped with meshgpu; it is always there as it is")
    return name


class ModelShelf(Protocol):
    """What the catalog needs of this node's model store (:class:`ModelStore`)."""

    def has(self, digest: str) -> bool: ...

    def path(self, digest: str) -> Path | None: ...


class ModelCatalog:
    """The catalog as the API and the HTTP port show and change it."""

    def __init__(
        self,
        node_id: str,
        entries: Callable[[], Mapping[str, CatalogEntry]],
        models: ModelShelf,
        feed: Callable[[CatalogChange], None],
    ) -> None:
        self.node_id = node_id
        self._entries = entries
        self._models = models
        self._feed = feed

    def names(self) -> dict[str, tuple[str, int]]:
        """name -> (digest, version): the shipped models, then the mesh's catalog."""
        names = {name: (digest, SHIPPED_VERSION) for name, digest in shipped_digests().items()}
        for name, entry in self._entries().items():
            if name not in SHIPPED:
                names[name] = (entry.digest, entry.version)
        return dict(sorted(names.items()))

    def rows(self) -> list[dict[str, Any]]:
        """The ``catalog`` answer: one row per name, and whether this node holds the model."""
        return [
            {
                "name": name,
                "digest": digest,
                "version": version,
                "shipped": name in SHIPPED,
                "here": self._models.has(digest),
            }
            for name, (digest, version) in self.names().items()
        ]

    async def set(self, name: str, digest: str) -> dict[str, Any]:
        """Name model ``digest`` (in this node's store, a readable ONNX graph) ``name``."""
        from meshgpu.http.models import read_model_info

        _name(name)
        check_digest(digest)
        path = self._models.path(digest)
        if path is None:
            raise TaskError(
                f"model {digest[:12]} is not on node {self.node_id}: upload it first with "
                "put_model (`meshgpu models add` does)"
            )
        try:
            await trio.to_thread.run_sync(read_model_info, path)
        except MeshError:
            raise
        except Exception as error:  # onnx raises its own types on garbage
            raise DecodeError(
                f"model {digest[:12]} is not a readable ONNX graph: {error}"
            ) from None
        self._feed(CatalogChange(name, digest))
        entry = self._entries()[name]
        return {"name": name, "digest": entry.digest, "version": entry.version}

    def remove(self, name: str) -> dict[str, Any]:
        """Drop ``name`` from the mesh's catalog (a no-op answer if it is not there)."""
        _name(name)
        known = name in self._entries()
        if known:
            self._feed(CatalogChange(name, None))
        return {"name": name, "removed": known}
