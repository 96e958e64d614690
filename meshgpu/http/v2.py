"""The Open Inference Protocol (KServe V2) on the wire: requests in, responses out.

Pure functions over bytes and numpy arrays, no I/O: the app (app.py) reads the body and
hands it here. A request is JSON, optionally followed by the binary tensor data extension
(``Inference-Header-Content-Length`` says how long the JSON header is; each input with a
``binary_data_size`` parameter takes that many raw little-endian bytes from the rest, in
order). Outputs go back as JSON ``data`` or, when the request asks for it (an output's
``binary_data`` parameter or the request's ``binary_data_output``), as raw bytes after the
JSON header, the same way.

Every protocol datatype that ONNX has is accepted, except two that meshgpu's tensor payloads
cannot carry: ``BYTES`` (ONNX string tensors) and ``BF16`` (numpy has no bfloat16). Those
are refused with a 400 that says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshgpu.core.tasks.spec import parse_labels
from meshgpu.errors import TaskError

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
}
"""The protocol's datatypes meshgpu carries, as little-endian numpy dtypes."""
UNSUPPORTED = {
    "BYTES": "string tensors are not carried by meshgpu's tensor payloads",
    "BF16": "bfloat16 is not carried by meshgpu's tensor payloads (numpy has no bfloat16)",
}
_NAME_OF_KIND = {dtype: name for name, dtype in DATATYPES.items()}

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
    request_id: str | None = None
    outputs: list[str] | None = None
    """The outputs asked for by name (None: all of them)."""
    binary: set[str] = field(default_factory=set)
    """Outputs to send as raw bytes."""
    binary_default: bool = False
    """The request's ``binary_data_output``: every output not named otherwise is binary."""
    placement: dict[str, list[str]] = field(default_factory=dict)
    """The request parameters ``require`` and ``prefer`` (worker labels, ``KEY=VALUE``)."""


def datatype_of(array: np.ndarray) -> str:
    name = _NAME_OF_KIND.get(
        array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    )
    if name is None:
        raise ProtocolError(f"an output of dtype {array.dtype} has no protocol datatype")
    return name


def _dtype(datatype: Any, where: str) -> np.dtype[Any]:
    if not isinstance(datatype, str):
        raise ProtocolError(f"{where}: 'datatype' must be a string like \"FP32\"")
    if datatype in UNSUPPORTED:
        raise ProtocolError(
            f"{where}: datatype {datatype} is not supported: {UNSUPPORTED[datatype]}"
        )
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(
            f"{where}: unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}"
        )
    return dtype


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
    for index, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict):
            raise ProtocolError(f"inputs[{index}] must be an object")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"inputs[{index}] has no 'name'")
        where = f"input {name!r}"
        if name in inputs:
            raise ProtocolError(f"{where} is given twice")
        dtype = _dtype(tensor.get("datatype"), where)
        shape = _shape(tensor.get("shape"), where)
        count = math.prod(shape)
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolError(f"{where}: 'parameters' must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if size != count * dtype.itemsize:
                raise ProtocolError(
                    f"{where}: binary_data_size is {size} bytes but shape {list(shape)} of "
                    f"{tensor['datatype']} needs {count * dtype.itemsize}"
                )
            if offset + size > len(view):
                raise ProtocolError(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(view) - offset} bytes left)"
                )
            array = np.frombuffer(view[offset : offset + size], dtype=dtype.newbyteorder("<"))
            offset += size
            inputs[name] = array.astype(dtype, copy=False).reshape(shape)
            continue
        if "data" not in tensor:
            raise ProtocolError(f"{where} has neither 'data' nor a binary_data_size parameter")
        try:
            array = np.asarray(tensor["data"], dtype=dtype)
        except (TypeError, ValueError, OverflowError) as error:
            raise ProtocolError(f"{where}: 'data' is not {tensor['datatype']}: {error}") from None
        if array.size != count:
            raise ProtocolError(
                f"{where}: shape {list(shape)} holds {count} values, 'data' has {array.size}"
            )
        inputs[name] = array.reshape(shape)
    if offset != len(view):
        raise ProtocolError(
            f"the body has {len(view) - offset} bytes after the tensors' binary data"
        )
    request = InferRequest(inputs=inputs)
    request_id = document.get("id")
    if request_id is not None:
        request.request_id = str(request_id)
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    request.binary_default = bool(parameters.get("binary_data_output", False))
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
            if options.get("binary_data", request.binary_default):
                request.binary.add(output["name"])
    return request


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
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        binary = name in request.binary or (request.outputs is None and request.binary_default)
        if binary:
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
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
