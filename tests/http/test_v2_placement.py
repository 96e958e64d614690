"""The V2 infer request's ``require`` / ``prefer`` parameters (worker labels)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.daemon.runtime import Daemon
from meshgpu.http.settings import HttpSettings
from meshgpu.http.v2 import ProtocolError, parse_request
from tests.daemon.test_runtime import MODELS, settings


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


async def test_a_request_no_live_node_can_place_fails_at_once_naming_the_labels(
    tmp_path: Path,
) -> None:
    """Through a labelled node's HTTP port: a request requiring its label runs there; one
    requiring a label no live node carries is answered 503 with the labels named, not
    assigned to any worker and not left waiting for one."""
    from tests.http.test_server import acall, infer_body

    config = dataclasses.replace(
        settings(tmp_path / "solo"), http=HttpSettings(port=0), labels=(("room", "b12"),)
    )
    pixels = np.load(MODELS / "digits_test.npz")["pixels"][:2]

    def placed(require: str) -> bytes:
        request = json.loads(infer_body(pixels))
        request["parameters"] = {"require": require}
        return json.dumps(request).encode()

    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(config).run)
        path = "/v2/models/digits/infer"
        status, _, answer = await acall(daemon, "POST", path, placed("room=b12"))
        assert status == 200, answer
        assert json.loads(answer)["outputs"][0]["shape"] == [2, 10]
        with trio.fail_after(30):  # bounded only so a regression fails instead of hanging
            status, _, answer = await acall(daemon, "POST", path, placed("gpu=h100"))
        # docs/http-api.md: 503, no live node can run it now (not a 500: nothing failed
        # in a run, and a node with the label may join)
        assert status == 503, answer
        assert "no live node carries the required labels gpu=h100" in json.loads(answer)["error"]
        # failed by the leader's placement check, before any assignment (leading.py)
        assert daemon.node.counters.get("tasks_unsatisfiable") == 1
        # Concurrent ones (coalesced into group entries, or alone): each a 503 too.
        answers: list[tuple[int, bytes]] = []

        async def one() -> None:
            status, _, answer = await acall(daemon, "POST", path, placed("gpu=h100"))
            answers.append((status, answer))

        with trio.fail_after(60):
            async with trio.open_nursery() as requests:
                for _ in range(6):
                    requests.start_soon(one)
        assert [status for status, _ in answers] == [503] * 6, answers
        assert all(b"gpu=h100" in answer for _, answer in answers)
        daemon.request_stop()
