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

from meshgpu.core.catalog import Batching, CatalogEntry, check_name
from meshgpu.core.events import CatalogChange
from meshgpu.daemon.modelstore import check_digest
from meshgpu.errors import DecodeError, MeshError, ModelError, TaskError

SHIPPED_DIR = Path(__file__).parents[1] / "inference" / "models"
SHIPPED = {"digits": SHIPPED_DIR / "digits.onnx"}
"""Models every node serves by name without being told: their bytes ship with meshgpu."""
SHIPPED_VERSION = 1


@cache
def shipped_digests() -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in SHIPPED.items()}


@cache
def shipped_batching() -> dict[str, Batching]:
    """The batching settings of the shipped models (the default for their graphs)."""
    return {name: default_batching(read_batch_dimension(path)) for name, path in SHIPPED.items()}


def read_batch_dimension(path: Path) -> bool:
    """Whether the ONNX graph at ``path`` declares a free batch dimension (batching.py);
    a ModelError if it keeps weights in external data files, which no node has (a model
    travels as its one ``.onnx`` file, so every run of it would fail)."""
    import onnx

    from meshgpu.daemon.batching import batch_dimension

    proto = onnx.load(str(path), load_external_data=False)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
        raise ModelError(
            f"model {path.stem[:12]} keeps weights in external data files, which are not "
            "uploaded; embed them first: onnx.save_model(onnx.load(PATH), NEW_PATH)"
        )
    return batch_dimension(proto)


def default_batching(batch_axis: bool) -> Batching:
    """What a model added without batching settings gets: the default for a graph with a
    free batch dimension, batching off (``max_batch`` 1) for any other."""
    from meshgpu.daemon.batching import DEFAULT_BATCHING

    return DEFAULT_BATCHING if batch_axis else Batching(max_batch=1, max_delay_us=0)


def batching_of_request(max_batch: Any, max_delay_ms: Any) -> tuple[int | None, int | None]:
    """The ``max_batch`` and ``max_delay_ms`` of a ``catalog_set`` request, checked; the
    delay in microseconds. None where the request leaves it to the default."""
    if max_batch is not None and (not isinstance(max_batch, int) or isinstance(max_batch, bool)):
        raise DecodeError(f"'max_batch' is a whole number, got {max_batch!r}")
    delay_us = None
    if max_delay_ms is not None:
        if not isinstance(max_delay_ms, int | float) or isinstance(max_delay_ms, bool):
            raise DecodeError(f"'max_delay_ms' is a number of milliseconds, got {max_delay_ms!r}")
        delay_us = round(max_delay_ms * 1000)
    return max_batch, delay_us


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

    def batching_for(self, digest: str) -> Batching | None:
        """The batching settings the catalog gives model ``digest`` (the first name that
        names it with settings), or None when no name does (a model submitted by file:
        the worker's default for its graph)."""
        for entry in self._entries().values():
            if entry.digest == digest and entry.batching is not None:
                return entry.batching
        for name, shipped in shipped_digests().items():
            if shipped == digest:
                return shipped_batching()[name]
        return None

    def names(self) -> dict[str, tuple[str, int]]:
        """name -> (digest, version): the shipped models, then the mesh's catalog."""
        names = {name: (digest, SHIPPED_VERSION) for name, digest in shipped_digests().items()}
        for name, entry in self._entries().items():
            if name not in SHIPPED:
                names[name] = (entry.digest, entry.version)
        return dict(sorted(names.items()))

    def rows(self) -> list[dict[str, Any]]:
        """The ``catalog`` answer: one row per name, and whether this node holds the model."""
        entries = self._entries()
        rows = []
        for name, (digest, version) in self.names().items():
            if name in SHIPPED:
                batching: Batching | None = shipped_batching()[name]
            else:
                batching = entries[name].batching
            rows.append(
                {
                    "name": name,
                    "digest": digest,
                    "version": version,
                    "shipped": name in SHIPPED,
                    "here": self._models.has(digest),
                    "max_batch": None if batching is None else batching.max_batch,
                    "max_delay_ms": None if batching is None else batching.max_delay_us / 1000,
                }
            )
        return rows

    async def set(
        self,
        name: str,
        digest: str,
        max_batch: int | None = None,
        max_delay_us: int | None = None,
    ) -> dict[str, Any]:
        """Name model ``digest`` (in this node's store, a readable ONNX graph) ``name``,
        with its dynamic batching settings: ``max_batch`` rows a run (1: off) and
        ``max_delay_us``; what is not given is the default for the graph (a free batch
        dimension batches, any other graph does not), and asking a graph without a free
        batch dimension to batch is refused."""
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
            batch_axis = await trio.to_thread.run_sync(read_batch_dimension, path)
        except MeshError:
            raise
        except Exception as error:  # onnx raises its own types on garbage
            raise DecodeError(
                f"model {digest[:12]} is not a readable ONNX graph: {error}"
            ) from None
        batching = self._batching(digest, batch_axis, max_batch, max_delay_us)
        self._feed(CatalogChange(name, digest, batching))
        entry = self._entries()[name]
        return {
            "name": name,
            "digest": entry.digest,
            "version": entry.version,
            "max_batch": batching.max_batch,
            "max_delay_ms": batching.max_delay_us / 1000,
        }

    @staticmethod
    def _batching(
        digest: str, batch_axis: bool, max_batch: int | None, max_delay_us: int | None
    ) -> Batching:
        default = default_batching(batch_axis)
        if max_batch is not None and max_batch > 1 and not batch_axis:
            raise TaskError(
                f"model {digest[:12]} cannot batch: its graph does not give every input and "
                "output the same free (symbolic) first dimension; add it without --max-batch "
                "(or re-export it with a dynamic batch axis)"
            )
        try:
            return Batching(
                default.max_batch if max_batch is None else max_batch,
                default.max_delay_us if max_delay_us is None else max_delay_us,
            )
        except ValueError as error:
            raise DecodeError(f"batching settings: {error}") from None

    def remove(self, name: str) -> dict[str, Any]:
        """Drop ``name`` from the mesh's catalog (a no-op answer if it is not there)."""
        _name(name)
        known = name in self._entries()
        if known:
            self._feed(CatalogChange(name, None))
        return {"name": name, "removed": known}
