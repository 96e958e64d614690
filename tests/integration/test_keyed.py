"""A keyed mesh: the client and the CLI work with --key-file / MESHGPU_KEY, and a client
without the key gets a message that says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from meshgpu.cli import main
from meshgpu.client import Client
from meshgpu.client.localmesh import LocalMesh
from meshgpu.daemon.auth import MeshKey

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_keyed_mesh_needs_the_key(tmp_path: Path, digits) -> None:
    pixels, _, expected = digits
    key_file = tmp_path / "mesh.key"
    MeshKey.generate().write(key_file)
    with LocalMesh(tmp_path / "mesh", 1, extra_args=("--key-file", str(key_file))) as mesh:
        peer = mesh.nodes[0].peer
        with Client(peer, key_file, environ={}) as client:
            outputs = client.submit("digits", {"pixels": pixels[:2]}).result(timeout=60)
        np.testing.assert_allclose(outputs["probabilities"], expected[:2], rtol=1e-5, atol=1e-6)
        runner = CliRunner()
        keyed = runner.invoke(
            main, ["status", "--peer", peer, "--json", "--key-file", str(key_file)]
        )
        assert keyed.exit_code == 0, keyed.output
        assert json.loads(keyed.stdout)["node"]["keyed"] is True
        by_env = runner.invoke(
            main, ["status", "--peer", peer], env={"MESHGPU_KEY": key_file.read_text().strip()}
        )
        assert by_env.exit_code == 0, by_env.output
        open_client = runner.invoke(main, ["status", "--peer", peer], env={"MESHGPU_KEY": ""})
        assert open_client.exit_code == 1
        # One line each, and each names its own problem: no key, another key, no daemon.
        assert open_client.output.strip().splitlines() == [
            f"Error: the meshgpu daemon at {peer} uses a mesh key and this client has "
            "none: give it the mesh's key with --key-file PATH or MESHGPU_KEY"
        ]
        other_key = tmp_path / "other.key"
        MeshKey.generate().write(other_key)
        wrong = runner.invoke(
            main, ["status", "--peer", peer, "--key-file", str(other_key)], env={}
        )
        assert wrong.exit_code == 1
        fingerprint = MeshKey.from_file(other_key).fingerprint
        assert wrong.output.strip().splitlines() == [
            f"Error: the meshgpu daemon at {peer} uses another mesh key than this "
            f"client's ({fingerprint}): give it the mesh's key with --key-file PATH or "
            "MESHGPU_KEY"
        ]
