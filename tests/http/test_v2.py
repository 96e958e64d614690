"""The protocol's tensors on the wire (v2.py, no server): every datatype as JSON and as
binary data, both ways, and values that do not fit their datatype refused with the reason."""

from __future__ import annotations

import json
import re
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from meshgpu.http.v2 import (
    InferRequest,
    ProtocolError,
    datatype_of,
    encode_response,
    parse_request,
)

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[0.5, -2.0, 65504.0]], np.float16),
    "FP32": np.array([[0.1, -2.5, 3.0e38]], np.float32),
    "FP64": np.array([[0.1, -2.5, 1.0e300]], np.float64),
    "BF16": np.array([[0.1, -2.5, 3.0e38]], ml_dtypes.bfloat16),
    "BYTES": np.array([["a", "", "héllo wörld"]], dtype=object),
}


def json_request(name: str, array: np.ndarray, datatype: str) -> bytes:
    data = array.reshape(-1)
    values = data.astype(np.float32).tolist() if datatype == "BF16" else data.tolist()
    return json.dumps(
        {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                     "data": values}]}
    ).encode()  # fmt: skip


def binary_request(name: str, array: np.ndarray, datatype: str) -> tuple[bytes, int]:
    if datatype == "BYTES":
        raw = b"".join(
            len(s.encode()).to_bytes(4, "little") + s.encode() for s in array.reshape(-1)
        )
    elif datatype == "BF16":
        raw = array.view(np.uint16).astype("<u2").tobytes()
    else:
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    header = json.dumps(
        {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                     "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()  # fmt: skip
    return header + raw, len(header)


def same(got: np.ndarray, wanted: np.ndarray) -> None:
    assert got.dtype == wanted.dtype and got.shape == wanted.shape
    assert got.tolist() == wanted.tolist()


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_is_read_as_json_and_as_binary(datatype: str) -> None:
    array = SAMPLES[datatype]
    same(parse_request(json_request("x", array, datatype), None).inputs["x"], array)
    body, length = binary_request("x", array, datatype)
    parsed = parse_request(body, length)
    same(parsed.inputs["x"], array)
    assert parsed.datatypes == {"x": datatype}
    assert datatype_of(array) == datatype


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_is_answered_as_json_and_as_binary(datatype: str, binary: bool) -> None:
    array = SAMPLES[datatype]
    request = InferRequest(inputs={}, binary_default=binary)
    content, length = encode_response("m", "1", {"y": array}, request, {"worker": "n"})
    header = json.loads(content if length is None else content[:length])
    (entry,) = header["outputs"]
    assert entry["datatype"] == datatype and entry["shape"] == [1, 3]
    if not binary:
        assert length is None
        wanted = array.astype(np.float32) if datatype == "BF16" else array
        assert entry["data"] == wanted.reshape(-1).tolist()
        return
    assert length is not None
    raw = content[length:]
    assert entry["parameters"]["binary_data_size"] == len(raw)
    # The same bytes a request carries: a response is read back like a request.
    again = parse_request(*binary_request("y", array, datatype))
    assert raw == binary_request("y", array, datatype)[0][-len(raw) :]
    same(again.inputs["y"], array)


@pytest.mark.parametrize("binary", [False, True])
def test_a_scalar_output_is_answered_with_shape_empty(binary: bool) -> None:
    request = InferRequest(inputs={}, binary_default=binary)
    content, length = encode_response("m", "1", {"y": np.float32(9.0) * np.ones((), np.float32)},
                                      request, {"worker": "n"})  # fmt: skip
    header = json.loads(content if length is None else content[:length])
    assert header["outputs"][0]["shape"] == []


@pytest.mark.parametrize(
    ("datatype", "data", "complaint"),
    [
        ("INT32", [1.5, 2], "'data' of INT32 holds integers"),
        ("INT32", [True, False], "'data' of INT32 holds integers"),
        ("UINT8", [1, 256], "outside UINT8's range [0, 255]"),
        ("INT8", [-129, 0], "outside INT8's range"),
        ("BOOL", [1, 0], "'data' of BOOL holds true or false"),
        ("FP16", [1.5, 70000], "holds 70000.0, outside FP16's range [-65504, 65504]"),
        ("FP16", [-65520, 0], "holds -65520.0, outside FP16's range"),
        ("FP32", [1e39, 0], "holds 1e+39, outside FP32's range"),
        ("BF16", [0, 3.4e39], "holds 3.4e+39, outside BF16's range"),
        ("FP32", ["a", "b"], "'data' of FP32 holds numbers"),
        ("BF16", ["a", "b"], "'data' of BF16 holds numbers"),
        ("BYTES", ["a", 3], "element 1 is int"),
        ("FP32", [[1.0], [2.0, 3.0]], "not a regular list"),
        ("HALF", [1.0, 2.0], "unknown datatype 'HALF'"),
    ],
)
def test_json_values_that_do_not_fit_their_datatype_are_refused(
    datatype: str, data: list[Any], complaint: str
) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]}
    ).encode()
    with pytest.raises(ProtocolError, match=re.escape(complaint)):
        parse_request(body, None)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (b"\x01\x00\x00\x00a", "cannot hold 2 strings"),
        (b"\x01\x00\x00\x00a\x09\x00\x00\x00b", "9 bytes long but only 1"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00\xff", "not UTF-8"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x00!", "1 bytes after the last"),
    ],
)
def test_binary_strings_that_do_not_add_up_are_refused(raw: bytes, complaint: str) -> None:
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES",
                     "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()  # fmt: skip
    with pytest.raises(ProtocolError, match=complaint):
        parse_request(header + raw, len(header))


def test_nested_json_strings_keep_their_shape() -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "BYTES",
                     "data": [["a", "b"], ["c", "d"]]}]}
    ).encode()  # fmt: skip
    same(parse_request(body, None).inputs["x"], np.array([["a", "b"], ["c", "d"]], dtype=object))


def timed_request(parameters: dict[str, Any]) -> bytes:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


@pytest.mark.parametrize(
    ("parameters", "deadline_s"),
    [
        ({}, None),
        ({"timeout": None}, None),
        ({"timeout": 0}, None),
        ({"timeout": 500_000}, 0.5),
        ({"timeout": 2.5e6}, 2.5),
    ],
)
def test_the_timeout_parameter_in_microseconds_is_the_deadline(
    parameters: dict[str, Any], deadline_s: float | None
) -> None:
    """Triton's schedule-policy ``timeout`` (what tritonclient's ``infer(timeout=...)``
    sends in the body's parameters), 0 meaning none."""
    assert parse_request(timed_request(parameters), None).deadline_s == deadline_s


@pytest.mark.parametrize("timeout", [-1, "500", True, [1]])
def test_a_timeout_that_is_no_count_of_microseconds_is_refused(timeout: Any) -> None:
    with pytest.raises(ProtocolError, match="'timeout' is the request's timeout in microseconds"):
        parse_request(timed_request({"timeout": timeout}), None)


def test_an_output_asking_for_classification_is_refused_not_answered_as_the_tensor() -> None:
    """tritonclient's ``InferRequestedOutput(name, class_count=3)``; it got the plain
    tensor where it expected "score:index" strings."""
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
         "outputs": [{"name": "y", "parameters": {"classification": 3}}]}
    ).encode()  # fmt: skip
    with pytest.raises(ProtocolError, match="output 'y': the classification extension"):
        parse_request(body, None)
    plain = body.replace(b'"classification": 3', b'"classification": 0')
    assert parse_request(plain, None).outputs == ["y"]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "BF16"])
def test_non_finite_values_travel_as_json_tokens_both_ways(datatype: str) -> None:
    # NaN, Infinity and -Infinity as bare tokens (what Python's json and RapidJSON's
    # kWriteNanAndInfFlag write and read); the binary extension carries their exact bits.
    dtype = ml_dtypes.bfloat16 if datatype == "BF16" else np.dtype(datatype.replace("FP", "float"))
    array = np.array([np.nan, np.inf, -np.inf, -0.0, 1.5], dtype)
    content, length = encode_response("m", "1", {"y": array}, InferRequest(inputs={}), {})
    assert length is None
    assert b'"data":[NaN,Infinity,-Infinity,-0.0,1.5]' in content
    (entry,) = json.loads(content)["outputs"]
    request = json.dumps(
        {"inputs": [{"name": "x", "shape": [5], "datatype": datatype, "data": entry["data"]}]}
    ).encode()
    again = parse_request(request, None).inputs["x"]
    assert again.dtype == array.dtype
    assert np.array_equal(again.astype(np.float64), array.astype(np.float64), equal_nan=True)
    assert np.signbit(again[3])


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "BF16"])
@pytest.mark.parametrize("literal", ["1e400", "-1E+400", "1" * 400 + ".5"])
def test_a_number_literal_beyond_a_double_is_refused_not_read_as_infinity(
    datatype: str, literal: str
) -> None:
    """Python's json reads ``1e400`` as inf: the input ran with an infinity its caller
    never wrote. JSON numbers are finite; the tokens ``Infinity`` (the test above) stay
    what they say."""
    body = json.dumps(
        {"inputs": [{"name": "ok", "shape": [1], "datatype": datatype, "data": ["INF"]},
                    {"name": "x", "shape": [2], "datatype": datatype, "data": [0.5, "BIG"]}]}
    ).encode().replace(b'"INF"', b"Infinity").replace(b'"BIG"', literal.encode())  # fmt: skip
    with pytest.raises(ProtocolError, match=f"input 'x': 'data' holds {re.escape(literal)}, "):
        parse_request(body, None)


@pytest.mark.parametrize("value", ["yes", "false", 1, None])
def test_binary_data_parameters_are_booleans(value: Any) -> None:
    """``"yes"`` (and ``"false"``) were read as true by their truthiness."""
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    asked = {"inputs": [tensor], "outputs": [{"name": "y", "parameters": {"binary_data": value}}]}
    with pytest.raises(ProtocolError, match="output 'y': parameter 'binary_data' is true or"):
        parse_request(json.dumps(asked).encode(), None)
    defaulted = {"inputs": [tensor], "parameters": {"binary_data_output": value}}
    with pytest.raises(ProtocolError, match="parameter 'binary_data_output' is true or false"):
        parse_request(json.dumps(defaulted).encode(), None)
    for flag in (True, False):
        asked["outputs"][0]["parameters"]["binary_data"] = flag  # type: ignore[index]
        assert parse_request(json.dumps(asked).encode(), None).binary == ({"y"} if flag else set())
