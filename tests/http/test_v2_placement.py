"""The V2 infer request's ``require`` / ``prefer`` parameters (worker labels)."""

from __future__ import annotations

import json

import pytest

from meshgpu.http.v2 import ProtocolError, parse_request


def body(parameters: object) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


def test_placement_parameters_are_parsed_and_checked() -> None:
    parsed = parse_request(body({"require": ["gpu=a100"], "prefer": "room=b12"}), None)
    assert parsed.placement == {"require": ["gpu=a100"], "prefer": ["room=b12"]}
    assert parse_request(body({}), None).placement == {}
    with pytest.raises(ProtocolError, match="KEY=VALUE"):
        parse_request(body({"require": ["gpu"]}), None)
    with pytest.raises(ProtocolError, match="'require' must be"):
        parse_request(body({"require": {"gpu": 1}}), None)
