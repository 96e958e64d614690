"""An open 3-daemon mesh moved to encryption node by node, the way docs/operations.md
says (real processes on 127.0.0.1): three rounds of one restart at a time, with the key
and both verify switches off, then outgoing on, then both on. At every step the running
nodes see each other alive, nobody is ever declared dead, nothing is refused, and tasks
submitted along the way are all delivered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.client import Client
from meshgpu.daemon.auth import Authenticator, MeshKey
from meshgpu.daemon.rpc import open_rpc
from tests.daemon.meshprocs import (
    Launched,
    MeshProcess,
    launch_node,
    start_together,
    until_listening,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 60.0
NAMES = ("node-a", "node-b", "node-c")
STAGES: tuple[tuple[str, ...], ...] = (
    ("--no-encrypt-verify-incoming", "--no-encrypt-verify-outgoing"),
    ("--no-encrypt-verify-incoming",),
    (),
)


def ask(node: MeshProcess, key: MeshKey | None, op: str, **fields: Any) -> dict[str, Any]:
    async def one() -> dict[str, Any]:
        async with open_rpc(node.address, Authenticator(key, "test-client")) as rpc:
            return await rpc.call(op, **fields)

    return trio.run(one)


def test_an_open_mesh_moves_to_encryption_node_by_node_without_a_partition(
    tmp_path: Path,
) -> None:
    key = MeshKey.generate()
    key_file = tmp_path / "mesh.key"
    key.write(key_file)
    nodes: dict[str, MeshProcess] = {}
    client_key: dict[str, MeshKey | None] = dict.fromkeys(NAMES)
    """The key a client uses with each node: none until it holds the key."""
    submitted: list[str] = []
    pixels = np.zeros((1, 64), dtype=np.float32)

    def launch(name: str, *args: str) -> Launched:
        others = [n for other, n in nodes.items() if other != name]
        seed = ["--peer", f"127.0.0.1:{others[0].port}"] if others else []
        port = ["--port", str(nodes[name].port)] if name in nodes else []
        return launch_node(
            tmp_path / name, "--name", name, "--device", "synthetic:20", *seed, *port, *args
        )

    def start(name: str, *args: str) -> None:
        nodes[name] = until_listening(launch(name, *args))

    def check_whole() -> None:
        """Every node sees all three alive; none was ever dead or refused anything."""
        for name, node in nodes.items():
            status = ask(node, client_key[name], "wait", alive=3, timeout=WAIT_S)
            assert not [g for g in status["gone"] if g["state"] in ("dead", "refused")], status
            assert status["counters"]["auth"].get("rejected", 0) == 0, status["counters"]
        entry = next(iter(nodes))
        key_file_or_none = key_file if client_key[entry] is not None else None
        with Client(f"127.0.0.1:{nodes[entry].port}", key_file_or_none, environ={}) as client:
            # Not watched: an outcome that came back before this client closed would be
            # acknowledged, and the final attach would find it already delivered.
            handles = client.submit_many("digits", [{"pixels": pixels}] * 6, watch=False)
        submitted.extend(handle.task_id for handle in handles)  # type: ignore[union-attr]

    try:
        first, *others = NAMES
        start(first)
        started = start_together([launch(name) for name in others])
        nodes.update(zip(others, started, strict=True))
        check_whole()
        for flags in STAGES:
            for name in NAMES:
                nodes[name].stop()
                start(name, "--key-file", str(key_file), *flags)
                client_key[name] = key
                check_whole()
        statuses = [ask(node, key, "status") for node in nodes.values()]
        assert all(status["node"]["encrypt_verify_incoming"] for status in statuses)
        assert {s["node"]["key_fingerprint"] for s in statuses} == {key.fingerprint}
        with Client(f"127.0.0.1:{nodes['node-a'].port}", key_file, environ={}) as client:
            outcomes = [client.attach(task).wait(timeout=WAIT_S) for task in submitted]
        failed = [(o.task_id, o.state, o.error) for o in outcomes if o.state != "done"]
        assert not failed, failed
        # The end state refuses a node without the key.
        with pytest.raises(Exception, match="uses a mesh key"):
            ask(nodes["node-b"], None, "status")
    finally:
        for node in nodes.values():
            node.stop()
