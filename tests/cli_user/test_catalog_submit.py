"""``meshgpu submit NAME`` runs the mesh catalog's model NAME (``meshgpu models add``):
it said 'cannot read model NAME: No such file or directory' and pointed to the HTTP port,
right after ``models add NAME FILE`` had succeeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from tests.cli_user.test_collect import cli, serve_and_run
from tests.cli_user.test_preflight import two_input_model


def test_submit_by_catalog_name_runs_the_catalogs_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    a, b = np.ones((2, 3), np.float32), np.full((2, 3), 2, np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    monkeypatch.chdir(tmp_path / "..")  # no file named like the model here

    def scenario(peer: str) -> list[Result]:
        inputs = ["-i", f"a={tmp_path / 'a.npy'}", "-i", f"b={tmp_path / 'b.npy'}"]
        common = ["--replicas", "1", "-o", str(tmp_path / "out"), "--peer", peer]
        return [
            cli("models", "add", "pair", str(model), "--peer", peer),
            cli("submit", "pair", *inputs, *common),
            cli("submit", "pear", *inputs, *common),
            cli("submit", "pair", "-i", f"a={tmp_path / 'a.npy'}", *common),
        ]

    added, submitted, misspelt, missing = serve_and_run(tmp_path, scenario)
    assert added.exit_code == 0, added.output
    assert submitted.exit_code == 0, submitted.output
    with np.load(tmp_path / "out" / "a.npz") as saved:
        np.testing.assert_array_equal(saved["s"], a + b)
    assert misspelt.exit_code == 1
    assert "no model file 'pear', and the mesh's catalog has no model 'pear'" in misspelt.output
    assert "(its models: " in misspelt.output
    assert "pair" in misspelt.output and "Traceback" not in misspelt.output
    # the catalog model's inputs are checked before anything is sent, as a file's are
    assert missing.exit_code == 1 and "'b'" in missing.output, missing.output
