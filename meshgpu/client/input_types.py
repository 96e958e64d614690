"""The element types a model declares for its inputs, for the client's one check that
needs them.

The client does not otherwise parse models (``meshgpu.client.models``), but a Python list
fed as an input becomes a float64 (or int64) array, which a float32 model refuses only at
the worker, after the upload and a queue wait. The declared types are read with onnx and
:func:`meshgpu.inference.model.graph_inputs`, the engine's own reading of a model's feeds,
once per model digest, and only when a list or a Python number is fed.
"""

from __future__ import annotations

import numpy as np

NUMERIC_DTYPES: frozenset[np.dtype[np.generic]] = frozenset(
    np.dtype(name)
    for name in (
        "float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
    )
)  # fmt: skip
"""The declared types a Python list can be made into (strings and bfloat16 are converted
by the client's own rules)."""

_CACHE_ENTRIES = 64
_DECLARED: dict[str, dict[str, np.dtype[np.generic]]] = {}
"""Declared input dtypes by model digest (oldest dropped first)."""


def _read(model: bytes) -> dict[str, np.dtype[np.generic]]:
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    from meshgpu.errors import ModelError
    from meshgpu.inference.model import graph_inputs

    try:
        inputs = graph_inputs(onnx.load_from_string(model))
    except (DecodeError, ModelError, ValueError, KeyError):
        return {}
    return {name: dtype for name, (_, dtype) in inputs.items() if dtype in NUMERIC_DTYPES}


def declared_input_dtypes(model: bytes, digest: str) -> dict[str, np.dtype[np.generic]]:
    """Input name -> numpy dtype the model (ONNX bytes, sha256 ``digest``) declares, for
    its numeric feeds; empty when the bytes are not readable as ONNX (the worker's check
    then speaks). Read once per digest."""
    known = _DECLARED.get(digest)
    if known is None:
        known = _read(model)
        _DECLARED[digest] = known
        while len(_DECLARED) > _CACHE_ENTRIES:
            del _DECLARED[next(iter(_DECLARED))]
    return known
