"""The model a client submits: its bytes and its sha256 digest, read once.

Models are content-addressed in the mesh: a submission names the model by digest, and
the client uploads the bytes only to a peer that says (``has_model``) it lacks them.
The client does not parse or check the model; the worker does, and a malformed model
fails its tasks permanently with the inference engine's message as the reason. That
keeps the client light (no onnx import) and the rule in one place. The one exception is
the inputs' declared dtypes, read with onnx once per model and only when a Python list
or number is fed (``meshgpu.client.input_types``), so a list numpy makes float64 is
refused before it is sent.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshgpu.errors import ConfigError

SHIPPED = {"digits": Path(__file__).resolve().parents[1] / "inference" / "models" / "digits.onnx"}
"""Models that ship with meshgpu, usable by name (``meshgpu submit digits ...``)."""


_READ_BYTES = 256 << 20
"""Most model bytes the cache below keeps alive (oldest dropped first)."""
_RACY_S = 2.0
"""A file changed this recently is not cached: on filesystems with coarse timestamps a
second change within the same tick would keep the same stat (git's "racy" rule)."""
_READ: dict[tuple[str, int, int, int, int, int], ModelBlob] = {}
"""Model files read lately, by (path, device, inode, size, mtime ns, ctime ns): a submit
of a path names the model by digest, and reading and hashing the file for every task cost
0.1 ms for the 0.1 MB digits model and would cost 50 ms for a 100 MB one. A file
rewritten in place gets a new ctime even when its mtime is put back (``cp -p``,
``tar -x``), so it is read again."""


@dataclass(frozen=True)
class ModelBlob:
    """A serialized ONNX model and its sha256 (hex); ``name`` is for messages only."""

    data: bytes = field(repr=False)
    digest: str
    name: str

    @classmethod
    def of(cls, model: Any) -> ModelBlob:
        """From a path, a shipped model's name, raw bytes, a ``ModelProto`` or a ModelBlob."""
        if isinstance(model, ModelBlob):
            return model
        if isinstance(model, bytes | bytearray | memoryview):
            data = bytes(model)
            name = "<bytes>"
        elif isinstance(model, str | os.PathLike):
            path = Path(model)
            if str(model) in SHIPPED and not path.exists():
                path = SHIPPED[str(model)]
            try:
                stat = path.stat()
                key = (
                    os.fspath(path),
                    stat.st_dev,
                    stat.st_ino,
                    stat.st_size,
                    stat.st_mtime_ns,
                    stat.st_ctime_ns,
                )
                cached = _READ.get(key)
                if cached is not None:
                    return cached
                data = path.read_bytes()
            except OSError as error:
                shipped = ", ".join(sorted(SHIPPED))
                hint = ""
                if "/" not in str(model):
                    # A bare word may be a catalog name (`meshgpu models add NAME`):
                    # `meshgpu submit NAME` and the HTTP port resolve those, and the
                    # client fetches one with catalog_model.
                    hint = (
                        f"; shipped models: {shipped}; a model of the mesh's catalog "
                        "(`meshgpu models list`) is client.catalog_model(NAME) here"
                    )
                raise ConfigError(
                    f"cannot read model {str(model)!r}: {error.strerror}{hint}"
                ) from None
            if not data:
                raise ConfigError(f"model {path.name} is empty")
            blob = cls(data, hashlib.sha256(data).hexdigest(), path.name)
            changed = max(stat.st_mtime_ns, stat.st_ctime_ns) / 1e9
            if time.time() - changed > _RACY_S and len(data) <= _READ_BYTES:
                _READ[key] = blob
                while sum(len(b.data) for b in _READ.values()) > _READ_BYTES:
                    del _READ[next(iter(_READ))]
            return blob
        elif hasattr(model, "SerializeToString"):
            data = model.SerializeToString()
            name = getattr(getattr(model, "graph", None), "name", "") or "<ModelProto>"
        else:
            raise ConfigError(
                f"a model is a path, a shipped model name, bytes or an onnx.ModelProto, "
                f"not {type(model).__name__}"
            )
        if not data:
            raise ConfigError(f"model {name} is empty")
        return cls(data, hashlib.sha256(data).hexdigest(), name)

    def input_dtypes(self) -> dict[str, Any]:
        """Input name -> numpy dtype the model declares for its numeric feeds, read from
        the bytes without decoding the model, once per digest
        (:mod:`meshgpu.client.input_types`); empty when unreadable."""
        from meshgpu.client.input_types import declared_input_dtypes

        return declared_input_dtypes(self.data, self.digest)
