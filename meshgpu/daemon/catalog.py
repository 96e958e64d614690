"""The daemon's side of the model catalog (core/catalog.py): the shipped models plus the
replicated names, and the API ops that change it (``meshgpu models``)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from meshgpu.core.catalog import check_name
from meshgpu.core.events import CatalogChange
from meshgpu.daemon.modelstore import check_digest
from meshgpu.errors import DecodeError, MeshError, TaskError

if TYPE_CHECKING:
    from meshgpu.daemon.runtime import Daemon

SHIPPED_DIR = Path(__file__).parents[1] / "inference" / "models"
SHIPPED = {"digits": SHIPPED_DIR / "digits.onnx"}
"""Models every node serves by name without being told: their bytes ship with meshgpu."""
SHIPPED_VERSION = 1


@cache
def shipped_digests() -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in SHIPPED.items()}


def catalog(daemon: Daemon) -> dict[str, tuple[str, int]]:
    """name -> (digest, version): the shipped models, then the mesh's catalog."""
    names = {name: (digest, SHIPPED_VERSION) for name, digest in shipped_digests().items()}
    for name, entry in daemon.node.catalog().items():
        if name not in SHIPPED:
            names[name] = (entry.digest, entry.version)
    return dict(sorted(names.items()))


def catalog_rows(daemon: Daemon) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "digest": digest,
            "version": version,
            "shipped": name in SHIPPED,
            "here": daemon.models.has(digest),
        }
        for name, (digest, version) in catalog(daemon).items()
    ]


def _name(name: str) -> str:
    try:
        check_name(name)
    except ValueError as error:
        raise DecodeError(str(error)) from None
    if name in SHIPPED:
        raise TaskError(f"{name!r} is a model shipped with meshgpu; it is always there as it is")
    return name


async def set_model(daemon: Daemon, name: str, digest: str) -> dict[str, Any]:
    """Name model ``digest`` (in this node's store, a readable ONNX graph) ``name``."""
    from meshgpu.http.models import read_model_info

    _name(name)
    check_digest(digest)
    path = daemon.models.path(digest)
    if path is None:
        raise TaskError(
            f"model {digest[:12]} is not on node {daemon.node_id}: upload it first with "
            "put_model (`meshgpu models add` does)"
        )
    try:
        await trio.to_thread.run_sync(read_model_info, path)
    except MeshError:
        raise
    except Exception as error:  # onnx raises its own types on garbage
        raise DecodeError(f"model {digest[:12]} is not a readable ONNX graph: {error}") from None
    daemon.feed(CatalogChange(name, digest))
    entry = daemon.node.catalog()[name]
    return {"name": name, "digest": entry.digest, "version": entry.version}


def remove_model(daemon: Daemon, name: str) -> dict[str, Any]:
    _name(name)
    known = name in daemon.node.catalog()
    if known:
        daemon.feed(CatalogChange(name, None))
    return {"name": name, "removed": known}
