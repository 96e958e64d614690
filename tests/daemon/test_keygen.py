"""`meshgpu keygen` writes a usable private key and will not clobber one."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner

from meshgpu.cli import main
from meshgpu.daemon.auth import MeshKey


def test_keygen_writes_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "mesh.key"
    runner = CliRunner()
    result = runner.invoke(main, ["keygen", str(path)])
    assert result.exit_code == 0, result.output
    key = MeshKey.from_file(path)
    assert key.fingerprint in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = runner.invoke(main, ["keygen", str(path)])
    assert again.exit_code != 0 and "--force" in again.output
    assert MeshKey.from_file(path) == key
    forced = runner.invoke(main, ["keygen", "--force", str(path)])
    assert forced.exit_code == 0 and MeshKey.from_file(path) != key
