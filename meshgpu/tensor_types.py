"""The two ONNX element types numpy has no plain dtype for, and how meshgpu carries them.

* ``bfloat16`` (ONNX ``BFLOAT16``): the ``ml_dtypes`` package's dtype, the one ``onnx``
  itself uses (``onnx.helper.tensor_dtype_to_np_dtype``) and depends on; imported only
  when a bfloat16 tensor is met (it takes a noticeable part of a second to import).
  Its bytes are the 2-byte little-endian elements, like any other dtype's.
* strings (ONNX ``STRING``): numpy object arrays of ``str``, as onnxruntime's Python API
  takes and returns them. Their bytes are the Open Inference Protocol's binary form of
  ``BYTES``: each element as a 4-byte little-endian length and that many bytes (UTF-8),
  in C order. The same form travels in meshgpu's tensor payloads (payloads.py), so an
  HTTP request's binary strings become a task's inputs with no re-encoding of the rules.
  Decoding insists on UTF-8: onnxruntime's strings are Python ``str``, and it turns a
  ``bytes`` element into the text of its ``repr`` instead of refusing it.

In payloads, a tensor's ``dtype`` field is numpy's ``dtype.str`` (``"<f4"``) for the
numeric kinds and the tags ``"bfloat16"`` and ``"string"`` for these two.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from meshgpu.errors import DecodeError

STRING = "string"
BFLOAT16 = "bfloat16"
NUMERIC_KINDS = ("b", "i", "u", "f", "c")
"""numpy dtype kinds carried as their own little-endian bytes."""
STRING_DTYPE: np.dtype[Any] = np.dtype(object)
STRING_LENGTH_BYTES = 4


def bfloat16() -> np.dtype[Any]:
    """The bfloat16 dtype (``ml_dtypes``, which onnx depends on)."""
    import ml_dtypes

    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def is_bfloat16(dtype: np.dtype[Any]) -> bool:
    return dtype.kind == "V" and dtype.name == BFLOAT16


def is_string(dtype: np.dtype[Any]) -> bool:
    """Whether arrays of ``dtype`` are string tensors (object arrays of ``str``)."""
    return dtype.kind == "O"


def dtype_tag(dtype: np.dtype[Any]) -> str:
    """The payload ``dtype`` field of arrays of ``dtype`` (numeric ones little-endian)."""
    if is_string(dtype):
        return STRING
    if is_bfloat16(dtype):
        return BFLOAT16
    if dtype.kind not in NUMERIC_KINDS:
        raise DecodeError(f"arrays of dtype {dtype} cannot be carried as tensors")
    return dtype.newbyteorder("<").str if dtype.byteorder == ">" else dtype.str


def dtype_of_tag(tag: Any) -> np.dtype[Any]:
    """Inverse of :func:`dtype_tag`; a DecodeError for anything it does not write."""
    if tag == STRING:
        return STRING_DTYPE
    if tag == BFLOAT16:
        return bfloat16()
    if not isinstance(tag, str):
        raise DecodeError(f"a tensor's dtype is a string, not {tag!r}")
    try:
        dtype = np.dtype(tag)
    except TypeError as error:
        raise DecodeError(f"unknown tensor dtype {tag!r}: {error}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise DecodeError(f"unsupported tensor dtype {tag!r}")
    return dtype


def little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` with little-endian elements (numeric ones; the others have no byte order)."""
    if array.dtype.kind in NUMERIC_KINDS and array.dtype.byteorder == ">":
        return array.astype(array.dtype.newbyteorder("<"))
    return array


def string_array(values: Any) -> np.ndarray:
    """An object array of ``str`` from an array of ``str`` or ``bytes`` (UTF-8) elements
    (numpy ``U`` and ``S`` arrays included); a DecodeError names an element that is
    neither, or bytes that are not UTF-8."""
    source = np.asarray(values)
    result = np.empty(source.shape, dtype=STRING_DTYPE)
    flat = result.reshape(-1)
    for index, element in enumerate(source.reshape(-1)):
        if isinstance(element, bytes):
            try:
                element = element.decode()
            except UnicodeDecodeError as error:
                raise DecodeError(
                    f"string element {index} is not UTF-8 ({error.reason} at byte "
                    f"{error.start}); ONNX string tensors hold text"
                ) from None
        elif not isinstance(element, str):
            raise DecodeError(
                f"string element {index} is {type(element).__name__}, not str or bytes"
            )
        flat[index] = element
    return result


def encode_strings(array: np.ndarray) -> bytes:
    """A string tensor's bytes: per element (C order) its 4-byte little-endian length,
    then its UTF-8 bytes."""
    parts = []
    for index, element in enumerate(np.asarray(array).reshape(-1)):
        if isinstance(element, str):
            data = element.encode()
        elif isinstance(element, bytes):
            data = element
        else:
            raise DecodeError(
                f"string element {index} is {type(element).__name__}, not str or bytes"
            )
        parts.append(len(data).to_bytes(STRING_LENGTH_BYTES, "little"))
        parts.append(data)
    return b"".join(parts)


def decode_strings(data: bytes | bytearray | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_strings`: an object array of ``str`` of ``shape``; a
    DecodeError when the bytes hold another number of elements, a length runs past the
    end, or an element is not UTF-8."""
    view = memoryview(data).cast("B")
    count = math.prod(shape)
    if count * STRING_LENGTH_BYTES > len(view):
        raise DecodeError(
            f"{len(view)} bytes cannot hold {count} strings (each has a 4-byte length)"
        )
    result = np.empty(count, dtype=STRING_DTYPE)
    offset = 0
    for index in range(count):
        if offset + STRING_LENGTH_BYTES > len(view):
            raise DecodeError(f"the strings' bytes end before element {index} of {count}")
        length = int.from_bytes(view[offset : offset + STRING_LENGTH_BYTES], "little")
        offset += STRING_LENGTH_BYTES
        if offset + length > len(view):
            raise DecodeError(
                f"string element {index} is {length} bytes long but only "
                f"{len(view) - offset} are left"
            )
        try:
            result[index] = str(view[offset : offset + length], "utf-8")
        except UnicodeDecodeError as error:
            raise DecodeError(
                f"string element {index} is not UTF-8 ({error.reason} at byte {error.start}); "
                "ONNX string tensors hold text"
            ) from None
        offset += length
    if offset != len(view):
        raise DecodeError(
            f"the strings' bytes have {len(view) - offset} bytes after the last of {count} elements"
        )
    return result.reshape(shape)


def payload_nbytes(array: np.ndarray) -> int:
    """How many bytes :func:`tensor_bytes` gives for ``array`` (without building them)."""
    if not is_string(array.dtype):
        return int(array.nbytes)
    return sum(
        STRING_LENGTH_BYTES + len(e if isinstance(e, bytes) else str(e).encode())
        for e in array.reshape(-1)
    )


def tensor_bytes(array: np.ndarray) -> bytes | memoryview:
    """An array's payload bytes: its little-endian C-order elements (a view of its
    memory where it already is one), or a string tensor's encoding."""
    if is_string(array.dtype):
        return encode_strings(array)
    little = np.ascontiguousarray(little_endian(array))
    return little.reshape(-1).view(np.uint8).data


def tensor_from_bytes(
    data: bytes | bytearray | memoryview, dtype: np.dtype[Any], shape: tuple[int, ...], what: str
) -> np.ndarray:
    """Inverse of :func:`tensor_bytes` (``what`` names the tensor in a DecodeError)."""
    if any(n < 0 for n in shape):
        raise DecodeError(f"{what}: shape {list(shape)} has a negative dimension")
    if is_string(dtype):
        try:
            return decode_strings(data, shape)
        except DecodeError as error:
            raise DecodeError(f"{what}: {error}") from None
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow to wrap
    if expected != len(data):
        name = BFLOAT16 if is_bfloat16(dtype) else str(dtype)
        raise DecodeError(
            f"{what}: shape {list(shape)} of {name} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)
