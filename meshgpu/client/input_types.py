"""The element types a model declares for its inputs, read from the ONNX bytes' protobuf
wire format without decoding the model.

The client does not parse models (``meshgpu.client.models``), but one check needs the
declared types: a Python list fed as an input becomes a float64 (or int64) array, which a
float32 model refuses only at the worker, after the upload and a queue wait. Reading the
few fields that name the inputs and their types skips every weight's bytes unread (the
protobuf encoding gives each field's length), so it costs microseconds for the small
models and milliseconds for a large graph's node list, and it is done once per model
digest. Field numbers are onnx.proto3's (ModelProto.graph = 7, GraphProto.input = 11,
GraphProto.initializer = 5, ValueInfoProto.name = 1 and .type = 2, TypeProto.tensor_type =
1, TypeProto.Tensor.elem_type = 1, TensorProto.name = 8).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ELEMENT_DTYPES: dict[int, np.dtype[np.generic]] = {
    1: np.dtype("float32"), 2: np.dtype("uint8"), 3: np.dtype("int8"), 4: np.dtype("uint16"),
    5: np.dtype("int16"), 6: np.dtype("int32"), 7: np.dtype("int64"), 9: np.dtype("bool"),
    10: np.dtype("float16"), 11: np.dtype("float64"), 12: np.dtype("uint32"),
    13: np.dtype("uint64"),
}  # fmt: skip
"""TensorProto.DataType -> numpy dtype for the numeric types a Python list can become
(strings and bfloat16 are converted by the client's own rules)."""

_CACHE_ENTRIES = 64
_DECLARED: dict[str, dict[str, np.dtype[np.generic]]] = {}
"""Declared input dtypes by model digest (oldest dropped first)."""


class _WireError(ValueError):
    """The bytes are not the protobuf this reader expects."""


def _varint(data: memoryview, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise _WireError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field in ``data[start:end]``;
    a length-delimited field's (start, end) is its contents', never read here."""
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at, end)
            yield number, wire, value, at
        elif wire == 2:
            length, at = _varint(data, at, end)
            if at + length > end:
                raise _WireError("field runs past its message")
            yield number, wire, at, at + length
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
            yield number, wire, at, at
        else:
            raise _WireError(f"wire type {wire}")
    if at != end:
        raise _WireError("field runs past its message")


def _child(data: memoryview, start: int, end: int, number: int) -> tuple[int, int] | None:
    """The last length-delimited field ``number`` (protobuf's rule for a repeated
    message field read as a single one) in ``data[start:end]``."""
    found = None
    for field, wire, first, last in _fields(data, start, end):
        if field == number and wire == 2:
            found = (first, last)
    return found


def _name(data: memoryview, start: int, end: int, number: int) -> str:
    span = _child(data, start, end, number)
    return "" if span is None else bytes(data[span[0] : span[1]]).decode("utf-8", "replace")


def _read(model: bytes) -> dict[str, np.dtype[np.generic]]:
    data = memoryview(model)
    graph = _child(data, 0, len(data), 7)
    if graph is None:
        return {}
    inputs: dict[str, int] = {}
    weights: set[str] = set()
    for field, wire, first, last in _fields(data, *graph):
        if wire != 2:
            continue
        if field == 5:  # an initializer: a graph input of that name is a weight
            weights.add(_name(data, first, last, 8))
        elif field == 11:
            type_span = _child(data, first, last, 2)
            tensor = None if type_span is None else _child(data, *type_span, 1)
            elem = 0
            if tensor is not None:
                for number, kind, value, _ in _fields(data, *tensor):
                    if number == 1 and kind == 0:
                        elem = value
            inputs[_name(data, first, last, 1)] = elem
    return {
        name: ELEMENT_DTYPES[elem]
        for name, elem in inputs.items()
        if name not in weights and elem in ELEMENT_DTYPES
    }


def declared_input_dtypes(model: bytes, digest: str) -> dict[str, np.dtype[np.generic]]:
    """Input name -> numpy dtype the model (ONNX bytes, sha256 ``digest``) declares, for
    its numeric feeds; empty when the bytes are not readable as ONNX (the worker's check
    then speaks). Read once per digest."""
    known = _DECLARED.get(digest)
    if known is None:
        try:
            known = _read(model)
        except _WireError:
            known = {}
        _DECLARED[digest] = known
        while len(_DECLARED) > _CACHE_ENTRIES:
            del _DECLARED[next(iter(_DECLARED))]
    return known
