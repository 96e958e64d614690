"""Key rotation on a running 3-daemon mesh (real processes on 127.0.0.1): tasks running
through install, use and remove are all delivered; a node down during a rotation catches
up from its saved keyring; a node holding only a removed key is refused and says why;
removing the primary is refused by the CLI with what to do (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from click.testing import CliRunner

from meshgpu.cli import main
from meshgpu.client import Client
from meshgpu.daemon.auth import Authenticator, MeshKey
from meshgpu.daemon.rpc import open_rpc
from tests.daemon.meshprocs import MeshProcess, start_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 60.0
TASKS = 60
TASK_MS = 150
"""Each task holds its node's one slot this long: 60 tasks keep 3 nodes busy ~3 s."""


@dataclass
class Rotation:
    root: Path
    keys: dict[str, MeshKey]
    nodes: list[MeshProcess]

    def key_file(self, name: str) -> Path:
        return self.root / f"{name}.key"

    def start(self, name: str, key: str, *extra: str) -> MeshProcess:
        seed = [] if not self.nodes else ["--peer", f"127.0.0.1:{self.nodes[0].port}"]
        return start_node(
            self.root / name,
            "--name",
            name,
            "--key-file",
            str(self.key_file(key)),
            "--device",
            f"synthetic:{TASK_MS}",
            *seed,
            *extra,
        )


def ask(node: MeshProcess, client_key: MeshKey, op: str, **fields: Any) -> dict[str, Any]:
    async def one() -> dict[str, Any]:
        async with open_rpc(node.address, Authenticator(client_key, "test-client")) as rpc:
            return await rpc.call(op, **fields)

    return trio.run(one)


@pytest.fixture(scope="module")
def rotation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotation]:
    root = tmp_path_factory.mktemp("rotation")
    keys = {name: MeshKey.generate() for name in ("k1", "k2", "k3")}
    for name, key in keys.items():
        key.write(root / f"{name}.key")
    mesh = Rotation(root, keys, [])
    try:
        for name in ("node-a", "node-b", "node-c"):
            mesh.nodes.append(mesh.start(name, "k1"))
        for node in mesh.nodes:
            ask(node, keys["k1"], "wait", alive=3, timeout=WAIT_S)
        yield mesh
    finally:
        for node in mesh.nodes:
            node.stop()


def primaries(mesh: Rotation, key: MeshKey) -> set[str]:
    return {ask(node, key, "status")["node"]["keyring"]["primary"] for node in mesh.nodes}


def test_rotation_while_tasks_run_loses_nothing(rotation: Rotation) -> None:
    k1, k2 = rotation.keys["k1"], rotation.keys["k2"]
    a = rotation.nodes[0]
    pixels = np.zeros((1, 64), dtype=np.float32)
    with Client(f"127.0.0.1:{a.port}", rotation.key_file("k1"), environ={}) as client:
        handles = client.submit_many("digits", [{"pixels": pixels}] * TASKS)
    task_ids = [handle.task_id for handle in handles]  # type: ignore[union-attr]
    assert len(task_ids) == TASKS
    installed = ask(a, k1, "keyring_install", key=k2.secret)
    assert all(node["ok"] for node in installed["nodes"]), installed
    used = ask(a, k1, "keyring_use", key_id=k2.fingerprint)
    assert {node["primary"] for node in used["nodes"]} == {k2.fingerprint}
    unfinished = sum(
        count
        for phase, count in ask(a, k2, "status")["tasks"].items()
        if phase not in ("done", "failed")
    )
    assert unfinished > 0, "the tasks all finished before the rotation: nothing was tested"
    removed = ask(a, k2, "keyring_remove", key_id=k1.fingerprint)
    assert all(node["ok"] and node["keys"] == [k2.fingerprint] for node in removed["nodes"])
    with Client(f"127.0.0.1:{a.port}", rotation.key_file("k2"), environ={}) as client:
        outcomes = [client.attach(task_id).wait(timeout=WAIT_S) for task_id in task_ids]
    assert [outcome.state for outcome in outcomes] == ["done"] * TASKS
    # Between the daemons nothing was refused at any step of the rotation.
    for node in rotation.nodes:
        auth = ask(node, k2, "status")["counters"]["auth"]
        assert auth.get("rejected", 0) == 0, (node.node_id, auth)
    assert primaries(rotation, k2) == {k2.fingerprint}


def test_a_node_down_during_a_rotation_catches_up_from_its_saved_keyring(
    rotation: Rotation,
) -> None:
    k1, k2, k3 = (rotation.keys[name] for name in ("k1", "k2", "k3"))
    a, c = rotation.nodes[0], rotation.nodes[2]
    ask(a, k2, "keyring_install", key=k3.secret)
    c.stop()
    used = ask(a, k2, "keyring_use", key_id=k3.fingerprint)
    assert {node["node_id"] for node in used["nodes"]} == {"node-a", "node-b"}
    # Restarted as it was first started (with k1, removed since): its keyring from the
    # data dir is used, not the key file.
    rotation.nodes[2] = c = rotation.start("node-c", "k1", "--port", str(c.port))
    kept = ask(c, k2, "status")["node"]["keyring"]
    assert k1.fingerprint in kept["removed"] and k3.fingerprint in kept["keys"]
    caught_up = ask(c, k2, "wait", counter=["daemon", "keyring_merges", 1], timeout=WAIT_S)
    assert caught_up["node"]["keyring"]["primary"] == k3.fingerprint
    for node in rotation.nodes:  # every node sees c back before the next step
        ask(node, k3, "wait", alive=3, timeout=WAIT_S)
    removed = ask(a, k3, "keyring_remove", key_id=k2.fingerprint)
    assert all(node["ok"] for node in removed["nodes"]) and len(removed["nodes"]) == 3


def test_removing_the_primary_is_refused_with_a_clear_message(rotation: Rotation) -> None:
    k3 = rotation.keys["k3"]
    peer = ["--peer", f"127.0.0.1:{rotation.nodes[1].port}", "--key-file"]
    runner = CliRunner()
    refused = runner.invoke(
        main, ["keyring", "remove", k3.fingerprint[:8], *peer, str(rotation.key_file("k3"))]
    )
    assert refused.exit_code == 1, refused.output
    assert f"key {k3.fingerprint} is the primary key" in refused.output
    assert "`meshgpu keyring use`" in refused.output
    listed = runner.invoke(main, ["keyring", "list", *peer, str(rotation.key_file("k3"))])
    assert listed.exit_code == 0, listed.output
    assert f"{k3.fingerprint}  held by 3/3  primary on 3" in listed.output, listed.output
    assert primaries(rotation, k3) == {k3.fingerprint}


def test_a_node_holding_only_a_removed_key_cannot_rejoin_and_says_why(
    rotation: Rotation,
) -> None:
    k1, k3 = rotation.keys["k1"], rotation.keys["k3"]
    a = rotation.nodes[0]
    stale = rotation.start("node-d", "k1")
    try:
        told = ask(stale, k1, "wait", counter=["auth", "refused_by_peer", 1], timeout=WAIT_S)
        alive = {m["node_id"] for m in told["members"] if m["state"] == "alive"}
        assert alive == {"node-d"}
        reasons = [record["reason"] for record in told["gone"] if record["state"] == "refused"]
        assert any(
            f"seals with key {k1.fingerprint}, which was removed" in reason
            and k3.fingerprint in reason
            for reason in reasons
        ), reasons
        refusing = ask(a, k3, "status")
        assert any(
            "was removed" in record["reason"]
            for record in refusing["gone"]
            if record["state"] == "refused"
        )
        assert "was removed" in stale.log.read_text()
    finally:
        stale.stop()
    # Given the current key, it joins, and learns the rest of the keyring from the mesh.
    stale = rotation.start("node-d", "k3", "--port", str(stale.port))
    try:
        joined = ask(stale, k3, "wait", alive=4, counter=["daemon", "keyring_merges", 1])
        assert joined["node"]["keyring"]["primary"] == k3.fingerprint
        assert k1.fingerprint in joined["node"]["keyring"]["removed"]
    finally:
        stale.stop()
