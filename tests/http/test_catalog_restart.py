"""The catalog survives a restart of the whole mesh: a model added on one node of three,
every node stopped, then restarted from its data directory, is listed and inferable on
every node, with onnxruntime's outputs; the first node back, alone, already has it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.daemon.meshprocs import (
    Launched,
    MeshProcess,
    launch_node,
    start_together,
    until_listening,
)
from tests.http.test_tritonclient import free_port, get_json, small_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 60.0
NAME = "small"


def infer(port: int, x: np.ndarray, k: np.ndarray) -> dict[str, Any]:
    body = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP64",
             "data": x.reshape(-1).tolist()},
            {"name": "k", "shape": list(k.shape), "datatype": "INT32", "data": k.tolist()},
        ]
    }  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{NAME}/infer",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert isinstance(answer, dict)
    return answer


def wait_listed(port: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            metadata = get_json(port, f"/v2/models/{NAME}")
            assert isinstance(metadata, dict) and metadata["name"] == NAME
            return
        except urllib.error.HTTPError as error:
            assert error.code == 404, error.read()
        assert time.monotonic() < deadline, f"{NAME} never listed on port {port}"
        time.sleep(0.2)


def wait_members(port: int, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        status = get_json(port, "/mesh/status")
        assert isinstance(status, dict)
        if sum(m["state"] == "alive" for m in status["members"]) == count:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def launch(root: Path, index: int, http_port: int, seed: MeshProcess | None) -> Launched:
    seeds = ["--peer", f"127.0.0.1:{seed.port}"] if seed is not None else []
    return launch_node(
        root / f"r{index}", "--name", f"r{index}", "--http-port", str(http_port), *seeds
    )


def test_a_model_added_on_one_node_survives_a_restart_of_the_whole_mesh(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from meshgpu.cli import main

    model = small_model(tmp_path / "small.onnx")
    x = np.random.default_rng(3).normal(size=(4, 4))
    k = np.arange(4, dtype=np.int32)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    z, n = session.run(["z", "n"], {"x": x, "k": k})

    def check(port: int) -> None:
        outputs = {o["name"]: o for o in infer(port, x, k)["outputs"]}
        np.testing.assert_allclose(np.reshape(outputs["z"]["data"], (4, 3)), z, rtol=1e-12)
        assert outputs["n"]["data"] == n.tolist()

    root = tmp_path / "mesh"
    ports = [free_port() for _ in range(3)]
    nodes: list[MeshProcess] = []
    try:
        nodes.append(until_listening(launch(root, 0, ports[0], None)))
        nodes += start_together([launch(root, i, ports[i], nodes[0]) for i in (1, 2)])
        wait_members(ports[0], 3)
        entry = f"127.0.0.1:{nodes[0].port}"
        added = CliRunner().invoke(main, ["models", "add", NAME, str(model), "--peer", entry])
        assert added.exit_code == 0, added.output
        for port in ports:
            wait_listed(port)
            check(port)  # every node has run it (and holds its bytes) before the stop
        for node in nodes:
            assert node.stop() == 0
        nodes.clear()

        # The last node back first, alone: what it lists comes from its own data dir.
        last = until_listening(launch(root, 2, ports[2], None))
        nodes.append(last)
        metadata = get_json(ports[2], f"/v2/models/{NAME}")  # no wait: listed at once
        assert isinstance(metadata, dict) and metadata["name"] == NAME
        check(ports[2])
        nodes += start_together([launch(root, i, ports[i], last) for i in (0, 1)])
        wait_members(ports[2], 3)
        for port in ports:
            wait_listed(port)
            check(port)
        rows = json.loads(
            CliRunner()
            .invoke(main, ["models", "list", "--json", "--peer", f"127.0.0.1:{nodes[1].port}"])
            .output
        )
        assert {row["name"]: row["version"] for row in rows}[NAME] == 1
    finally:
        for node in nodes:
            node.stop()
