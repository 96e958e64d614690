"""ModelBlob.of: a model file is read and hashed once per version of the file."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from meshgpu.client import models
from meshgpu.client.models import ModelBlob
from meshgpu.errors import ConfigError


def age(path: Path, seconds: float) -> None:
    """Set the file's mtime back (its ctime moves to now, as any metadata change does)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_READ", {})
    monkeypatch.setattr(models, "_RACY_S", 0.0)


def test_a_file_is_read_once_while_unchanged(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"version one")
    first = ModelBlob.of(path)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read again"))
    assert ModelBlob.of(str(path)) is first


def test_same_size_rewrite_with_the_old_mtime_put_back_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"version one")
    age(path, 60)
    old = os.stat(path)
    assert ModelBlob.of(path).data == b"version one"
    time.sleep(0.01)  # a new ctime tick for the rewrite
    path.write_bytes(b"version two")  # same size, same inode
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # as cp -p or tar -x would
    blob = ModelBlob.of(path)
    assert blob.data == b"version two"
    assert blob.digest == hashlib.sha256(b"version two").hexdigest()


def test_a_file_changed_within_the_racy_window_is_not_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(models, "_RACY_S", 3600.0)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"fresh")
    ModelBlob.of(path)
    assert models._READ == {}


def test_a_bare_name_that_is_no_file_points_to_the_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # `meshgpu models add resnet ...` then `client.submit("resnet", ...)` read as a file
    with pytest.raises(ConfigError, match=r"shipped models: digits; .*catalog_model\(NAME\)"):
        ModelBlob.of("resnet")
    with pytest.raises(ConfigError) as refused:
        ModelBlob.of("models/resnet.onnx")
    assert "catalog" not in str(refused.value)
