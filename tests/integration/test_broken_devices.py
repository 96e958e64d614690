"""A mesh whose every OpenCL device is broken still runs every task: a device problem is
the worker's, never the task's (design, "Devices are probed, not trusted").

``POCL_EXTRA_BUILD_FLAGS=-cl-std=CL9.9`` makes every PoCL build fail, as the PoCL from PyPI
does on a CPU newer than its LLVM. The daemons run with ``--backend auto`` (the default):
each probes its devices at start, leaves the broken ones out, and runs a model it never saw
on onnxruntime, without one failed attempt.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import trio

from meshgpu.client import AsyncClient
from meshgpu.client.localmesh import LocalMesh
from meshgpu.client.models import ModelBlob
from meshgpu.inference import devices, probe
from tests.integration.conftest import WAIT_S, affine_model, reference, wait_alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BROKEN = {"POCL_EXTRA_BUILD_FLAGS": "-cl-std=CL9.9"}
ONLY_POCL = all(d.platform == probe.POCL_PLATFORM for d in devices() if d.backend == "opencl")
TASKS = 20


@pytest.fixture
def broken_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalMesh]:
    for name, value in BROKEN.items():
        monkeypatch.setenv(name, value)  # the daemons inherit it
    monkeypatch.setenv("MESHGPU_CACHE_DIR", str(tmp_path / "cache"))
    mesh = LocalMesh(tmp_path, 3, prefix="bd", backend="auto").__enter__()
    try:
        trio.run(wait_alive, mesh, 3)
        yield mesh
    finally:
        mesh.close()


def _model() -> onnx.ModelProto:
    """The affine test model under a name of its own: a digest no daemon has seen."""
    model = affine_model()
    model.graph.name = "never-seen-by-this-mesh"
    return model


async def test_every_task_of_a_new_model_completes_when_every_opencl_device_is_broken(
    broken_mesh: LocalMesh,
) -> None:
    model = _model()
    digest = ModelBlob.of(model).digest
    rng = np.random.default_rng(3)
    batches = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(TASKS)]
    async with AsyncClient([node.peer for node in broken_mesh.nodes], environ={}) as client:
        with trio.fail_after(WAIT_S * 2):
            handles = await client.submit_many(model, batches)
            outputs = [await handle.result() for handle in handles]
    for feeds, got in zip(batches, outputs, strict=True):
        np.testing.assert_allclose(got["y"], reference(model, feeds)["y"], rtol=1e-5, atol=1e-6)
    on_fallback: dict[str, str] = {}
    ran = 0
    for node in broken_mesh.nodes:
        async with AsyncClient(node.peer, environ={}) as client:
            status = await client.call("status")
        assert status["node"]["attempts"]["failed"] == 0, status["node"]
        ran += status["node"]["attempts"]["ok"]
        assert "failed" not in status["tasks"], status["tasks"]
        on_fallback.update(status["node"]["fallback_models"])
        for member in status["members"]:  # every load a node publishes names its devices
            if member["load"] is not None and member["load"]["version"] > 0:
                assert member["load"]["usable_devices"], member
        log = node.log.read_text(errors="replace")
        assert "-cl-std=CL9.9" in log
        if ONLY_POCL:
            assert status["node"]["usable_devices"] == ["onnxruntime:cpu"]
            assert "is not usable (models run on onnxruntime instead)" in log
    assert ran >= TASKS  # at least once each (at-least-once execution)
    if ONLY_POCL:
        assert digest in on_fallback, on_fallback
        assert all("no usable OpenCL device" in why for why in on_fallback.values())


def test_a_restarted_daemon_reuses_the_cached_verdicts(broken_mesh: LocalMesh) -> None:
    node = broken_mesh.nodes[2]
    node.signal_stop()
    node.wait_stopped(30)
    first_start = node.log.read_text(errors="replace")
    broken_mesh.restart(node)
    log = node.log.read_text(errors="replace")[len(first_start) :]
    assert "device probes: 0 built" in log, log[-2000:]


def test_an_explicit_opencl_daemon_refuses_to_start_naming_the_problem(tmp_path: Path) -> None:
    if not ONLY_POCL:
        pytest.skip("a vendor driver is not broken by POCL_EXTRA_BUILD_FLAGS")
    command = [
        sys.executable, "-m", "meshgpu", "join", "--backend", "opencl", "--no-mdns",
        "--bind", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path / "node"),
    ]  # fmt: skip
    environment = {**os.environ, **BROKEN, "MESHGPU_CACHE_DIR": str(tmp_path / "cache")}
    started = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=120, check=False
    )
    assert started.returncode == 1
    assert "no usable OpenCL device" in started.stderr and "-cl-std=CL9.9" in started.stderr
    assert "--backend auto" in started.stderr
