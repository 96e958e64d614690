"""The Open Inference Protocol (KServe V2) on the wire: requests in, responses out.

Pure functions over bytes and numpy arrays, no I/O: the app (app.py) reads the body and
hands it here. A request is JSON, optionally followed by the binary tensor data extension
(``Inference-Header-Content-Length`` says how long the JSON header is; each input with a
``binary_data_size`` parameter takes that many raw little-endian bytes from the rest, in
order). Outputs go back as JSON ``data`` or, when the request asks for it (an output's
``binary_data`` parameter or the request's ``binary_data_output``), as raw bytes after the
JSON header, the same way.

Every protocol datatype that ONNX has is carried both ways, as JSON and as binary data:
the numeric ones as numpy arrays of that dtype, ``BF16`` as ``ml_dtypes``' bfloat16 (JSON
numbers; 2-byte elements), ``BYTES`` as ONNX string tensors (JSON strings; each binary
element a 4-byte little-endian length and its UTF-8 bytes, tensor_types.py). JSON values
are checked against the datatype, not converted on the quiet: a fraction or ``true`` for
an ``INT32``, a number out of its range, a string for ``FP32`` are each a 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshgpu.core.tasks.spec import parse_labels
from meshgpu.errors import DecodeError, TaskError
from meshgpu.tensor_types import (
    STRING_DTYPE,
    bfloat16,
    decode_strings,
    encode_strings,
    is_bfloat16,
    string_array,
)

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": STRING_DTYPE,
}
"""The protocol's datatypes as numpy dtypes (numeric ones little-endian), but ``BF16``,
whose dtype comes from ``ml_dtypes`` when first met (:func:`dtype_of`)."""
_NAME_OF_KIND = {dtype: name for name, dtype in DATATYPES.items()}
NAMES = (*DATATYPES, "BF16")

ONNX_DATATYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}  # fmt: skip
"""ONNX ``TensorProto.DataType`` -> the protocol's datatype name."""


class ProtocolError(ValueError):
    """A request the protocol (or this model) does not accept: answered with a 400."""


@dataclass
class InferRequest:
    """A decoded infer request."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str] = field(default_factory=dict)
    """Each input's datatype as the request named it."""
    request_id: str | None = None
    outputs: list[str] | None = None
    """The outputs asked for by name (None: all of them)."""
    binary: set[str] = field(default_factory=set)
    """Outputs to send as raw bytes."""
    binary_default: bool = False
    """The request's ``binary_data_output``: every output not named otherwise is binary."""
    placement: dict[str, list[str]] = field(default_factory=dict)
    """The request parameters ``require`` and ``prefer`` (worker labels, ``KEY=VALUE``)."""
    deadline_s: float | None = None
    """The request parameter ``timeout`` (microseconds, Triton's schedule-policy
    extension, what ``tritonclient``'s ``infer(timeout=...)`` sends) in seconds: the
    task's deadline. None without it or for 0, which the protocol reads as no timeout."""


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name for the dtype of ``array``."""
    if is_bfloat16(array.dtype):
        return "BF16"
    name = _NAME_OF_KIND.get(
        array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    )
    if name is None:
        raise ProtocolError(f"an output of dtype {array.dtype} has no protocol datatype")
    return name


def datatype_name(datatype: object, where: str) -> str:
    """A tensor's ``datatype`` field, which must be a string (a ProtocolError if not)."""
    if not isinstance(datatype, str):
        raise ProtocolError(f"{where}: 'datatype' must be a string like \"FP32\"")
    return datatype


def dtype_of(datatype: str, where: str) -> np.dtype[Any]:
    """The numpy dtype of a protocol datatype name (a ProtocolError for anything else)."""
    if datatype == "BF16":
        return bfloat16()
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r}; one of {', '.join(NAMES)}")
    return dtype


def _binary_tensor(
    data: memoryview, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], where: str
) -> np.ndarray:
    """An input from its binary data (already cut to its ``binary_data_size``)."""
    if datatype == "BYTES":
        try:
            return decode_strings(data, shape)
        except DecodeError as error:
            raise ProtocolError(f"{where}: {error}") from None
    if datatype == "BF16":  # raw 2-byte elements, little-endian like every other
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint16, copy=False)
        return bits.view(dtype).reshape(shape)
    array = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
    return array.astype(dtype, copy=False).reshape(shape)


def _python_integers(values: list[Any], datatype: str, where: str) -> np.ndarray:
    """An object array of the JSON integers in ``values`` (a ProtocolError for a value
    that is not one)."""
    array = np.array(values, dtype=object)
    for value in array.reshape(-1):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{where}: 'data' of {datatype} holds integers; got {value!r}")
    return array


def _json_tensor(
    values: Any, datatype: str, dtype: np.dtype[Any], where: str, source: tuple[bytes, int]
) -> np.ndarray:
    """An input from its JSON ``data`` (flat or nested), each value checked against the
    datatype: strings for BYTES, booleans for BOOL, integers in range for the integer
    types, numbers for the floating ones. ``source``: the request's JSON header and the
    input's index in it, read again when ``data`` holds an infinity, to tell the token
    ``Infinity`` from a number literal too large for a double (``1e400``), which
    Python's json reads as infinity too."""
    if not isinstance(values, list):
        raise ProtocolError(f"{where}: 'data' must be a list of values")
    try:
        if datatype == "BYTES":
            return string_array(np.array(values, dtype=object))
        raw = np.asarray(values)
    except DecodeError as error:
        raise ProtocolError(f"{where}: 'data' is not {datatype}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"{where}: 'data' is not a regular list of values: {error}") from None
    if raw.size == 0:
        return raw.astype(dtype)
    if dtype.kind in "iu" and raw.dtype.kind not in "iu":
        # numpy makes float64 (or objects) of integers beyond int64 mixed with negative
        # ones; Python's integers are exact: checked one by one on this rare path.
        raw = _python_integers(values, datatype, where)
    accepted = {"b": "b", "i": "iuO", "u": "iuO", "f": "iuf", "V": "iuf"}[dtype.kind]
    if raw.dtype.kind not in accepted:
        wanted = {"b": "true or false", "i": "integers", "u": "integers"}.get(dtype.kind, "numbers")
        raise ProtocolError(
            f"{where}: 'data' of {datatype} holds {wanted}; got values of numpy kind "
            f"{raw.dtype} (e.g. {raw.reshape(-1)[0]!r})"
        )
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        low, high = int(raw.min()), int(raw.max())
        if low < limits.min or high > limits.max:
            raise ProtocolError(
                f"{where}: 'data' holds {low if low < limits.min else high}, outside "
                f"{datatype}'s range [{limits.min}, {limits.max}]"
            )
        return raw.astype(dtype)
    if raw.dtype.kind == "f" and np.isinf(raw).any():
        literal = _overflowing_literal(*source)
        if literal is not None:
            raise ProtocolError(
                f"{where}: 'data' holds {literal}, beyond any floating-point range "
                "(JSON numbers are finite; Infinity and NaN are written as those tokens)"
            )
    with np.errstate(over="ignore"):
        array = raw.astype(dtype)
    if dtype.kind in "fV":
        # A finite value past the type's largest became infinity on the quiet (70000
        # as FP16); the tokens Infinity and -Infinity stay what they say.
        overflowed = np.isinf(array.astype(np.float64)) & np.isfinite(raw.astype(np.float64))
        if overflowed.any():
            largest = _largest(dtype)
            raise ProtocolError(
                f"{where}: 'data' holds {float(raw[overflowed].reshape(-1)[0])!r}, outside "
                f"{datatype}'s range [{-largest:g}, {largest:g}]"
            )
    return array


class _Overflowing(float):
    """A JSON number literal too large for a double, as written (``1e400``)."""

    text: str


def _overflowing_literal(header: bytes, index: int) -> str | None:
    """The first number literal in the ``data`` of ``inputs[index]`` that a double
    cannot hold, as written; None when its infinities are ``Infinity`` tokens.

    Invoked only when that ``data`` holds an infinity: the common request is parsed
    once, by the C scanner; this one is parsed again, marking overflowing literals."""

    def parse_float(text: str) -> float:
        value = float(text)
        if not math.isinf(value):
            return value
        marked = _Overflowing(value)
        marked.text = text
        return marked

    data = json.loads(header, parse_float=parse_float)["inputs"][index].get("data")
    for value in _flat(data):
        if isinstance(value, _Overflowing):
            return value.text
    return None


def _flat(values: Any) -> list[Any]:
    """The leaves of a nested JSON list."""
    if not isinstance(values, list):
        return [values]
    return [leaf for value in values for leaf in _flat(value)]


def _largest(dtype: np.dtype[Any]) -> float:
    """The largest finite value of a floating ``dtype`` (bfloat16's bits 0x7f7f)."""
    if dtype.kind == "V":
        return float(np.array([0x7F7F], np.uint16).view(dtype)[0])
    return float(np.finfo(dtype).max)


def _shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def parse_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an infer request body (``header_length``: the value of the
    ``Inference-Header-Content-Length`` header, None without it)."""
    if header_length is None:
        header, rest = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes"
            )
        header, rest = body[:header_length], body[header_length:]
    try:
        document = json.loads(header)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the request is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ProtocolError("the request must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    view = memoryview(rest)
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    request_datatypes: dict[str, str] = {}
    for index, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict):
            raise ProtocolError(f"inputs[{index}] must be an object")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"inputs[{index}] has no 'name'")
        where = f"input {name!r}"
        if name in inputs:
            raise ProtocolError(f"{where} is given twice")
        datatype = datatype_name(tensor.get("datatype"), where)
        dtype = dtype_of(datatype, where)
        shape = _shape(tensor.get("shape"), where)
        count = math.prod(shape)
        request_datatypes[name] = datatype
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolError(f"{where}: 'parameters' must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if datatype != "BYTES" and size != count * dtype.itemsize:
                raise ProtocolError(
                    f"{where}: binary_data_size is {size} bytes but shape {list(shape)} of "
                    f"{tensor['datatype']} needs {count * dtype.itemsize}"
                )
            if offset + size > len(view):
                raise ProtocolError(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(view) - offset} bytes left)"
                )
            inputs[name] = _binary_tensor(
                view[offset : offset + size], datatype, dtype, shape, where
            )
            offset += size
            continue
        if "data" not in tensor:
            raise ProtocolError(f"{where} has neither 'data' nor a binary_data_size parameter")
        array = _json_tensor(tensor["data"], datatype, dtype, where, (header, index))
        if array.size != count:
            raise ProtocolError(
                f"{where}: shape {list(shape)} holds {count} values, 'data' has {array.size}"
            )
        inputs[name] = array.reshape(shape)
    if offset != len(view):
        raise ProtocolError(
            f"the body has {len(view) - offset} bytes after the tensors' binary data"
        )
    request = InferRequest(inputs=inputs, datatypes=request_datatypes)
    request_id = document.get("id")
    if request_id is not None:
        request.request_id = str(request_id)
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    request.binary_default = _flag(parameters, "binary_data_output", False, "parameter")
    request.deadline_s = _deadline_s(parameters.get("timeout"))
    for name in ("require", "prefer"):
        labels = parameters.get(name)
        if labels is None:
            continue
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ProtocolError(f"parameter {name!r} must be a KEY=VALUE string or a list of them")
        try:
            request.placement[name] = [f"{k}={v}" for k, v in parse_labels(labels, name)]
        except TaskError as error:
            raise ProtocolError(str(error)) from None
    raw_outputs = document.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list")
        request.outputs = []
        for index, output in enumerate(raw_outputs):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise ProtocolError(f"outputs[{index}] must be an object with a 'name'")
            request.outputs.append(output["name"])
            options = output.get("parameters") or {}
            if not isinstance(options, dict):
                raise ProtocolError(f"outputs[{index}]: 'parameters' must be an object")
            if options.get("classification"):
                # tritonclient's class_count: answering the plain tensor instead handed a
                # caller expecting "score:index" strings numbers it would misread.
                raise ProtocolError(
                    f"output {output['name']!r}: the classification extension "
                    f"('classification': {options['classification']!r}, tritonclient's "
                    "class_count) is not served; ask for the tensor and take its top classes"
                )
            where = f"output {output['name']!r}: parameter"
            if _flag(options, "binary_data", request.binary_default, where):
                request.binary.add(output["name"])
    return request


def _flag(parameters: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    """A boolean parameter: ``"yes"`` or ``1`` is a 400, not read as true (nor
    ``"false"`` as true, which ``bool()`` made of it)."""
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where} {name!r} is true or false, got {value!r}")
    return value


def _deadline_s(timeout: object) -> float | None:
    """The request parameter ``timeout`` (microseconds; 0 or absent: none) in seconds."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise ProtocolError(
            f"parameter 'timeout' is the request's timeout in microseconds, a number >= 0 "
            f"(0: none), got {timeout!r}"
        )
    return None if timeout == 0 else timeout / 1e6


def encode_response(
    model: str,
    version: str,
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
    parameters: Mapping[str, Any],
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON header's length."""
    names = list(outputs) if request.outputs is None else request.outputs
    for name in names:
        if name not in outputs:
            raise ProtocolError(
                f"unknown output {name!r}; the model's outputs are {', '.join(outputs)}"
            )
    tensors = []
    blobs = []
    for name in names:
        array = np.asarray(outputs[name], order="C")  # keeps a rank-0 output's shape []
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        binary = name in request.binary or (request.outputs is None and request.binary_default)
        if binary:
            data = _binary_data(array, entry["datatype"])
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = _json_data(array, entry["datatype"])
        tensors.append(entry)
    document: dict[str, Any] = {
        "model_name": model,
        "model_version": version,
        "outputs": tensors,
        "parameters": dict(parameters),
    }
    if request.request_id is not None:
        document["id"] = request.request_id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _binary_data(array: np.ndarray, datatype: str) -> bytes:
    """An output's bytes in the binary tensor data extension."""
    if datatype == "BYTES":
        try:
            return encode_strings(array)
        except DecodeError as error:
            raise ProtocolError(f"an output of BYTES cannot be sent: {error}") from None
    if datatype == "BF16":
        return array.view(np.uint16).astype("<u2", copy=False).tobytes()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _json_data(array: np.ndarray, datatype: str) -> list[Any]:
    """An output's values as a flat JSON list (BF16 as the numbers they are, BYTES as
    strings)."""
    flat = array.reshape(-1)
    if datatype == "BF16":
        return flat.astype(np.float32).tolist()
    if datatype == "BYTES":
        try:
            return [str(text) for text in string_array(flat)]
        except DecodeError as error:
            raise ProtocolError(f"an output of BYTES cannot be sent as JSON: {error}") from None
    return flat.tolist()
