"""Devices are probed, not trusted: the probe, its cache, and how ``load`` routes around a
broken device or a model that fails on a usable one.

A broken device is made two ways: ``POCL_EXTRA_BUILD_FLAGS=-cl-std=CL9.9`` (every PoCL build
fails; set in a child process, since PoCL reads its environment once per process) and an
executor hook that corrupts one output (a device that builds and computes wrong results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyopencl as cl
import pytest

from meshgpu import inference
from meshgpu.errors import DeviceError
from meshgpu.inference import probe
from meshgpu.inference import session as session_module
from meshgpu.inference.opencl import OpenCLSession, programs

BROKEN_POCL = {"POCL_EXTRA_BUILD_FLAGS": "-cl-std=CL9.9"}
OPENCL = [device for device in inference.devices() if device.backend == "opencl"]


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private verdict cache and fresh in-process verdicts, restored afterwards."""
    monkeypatch.setenv("MESHGPU_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(session_module, "_failing", {})
    probe.forget()
    yield tmp_path / probe.CACHE_FILE
    probe.forget()


def meshgpu_cli(*args: str, env: dict[str, str], cache: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env, "MESHGPU_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "meshgpu", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


def test_this_machine_has_a_usable_opencl_device(own_cache: Path) -> None:
    """What CI guarantees (docs/operations.md): the OpenCL tests run, they do not skip."""
    judged = [probe.verdict(device) for device in OPENCL]
    assert any(verdict.usable for verdict in judged), judged
    for verdict in judged:
        assert verdict.usable == (verdict.problem is None) == (verdict.advice is None)
        assert verdict.probe_ms > 0 and not verdict.cached


def test_devices_check_passes_on_this_machine(tmp_path: Path) -> None:
    """``.ci/run`` relies on it: exit status 0 when an OpenCL device is usable."""
    checked = meshgpu_cli("devices", "--check", env={}, cache=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "usable" in checked.stdout


def test_a_second_start_reads_the_cached_verdict_and_builds_nothing(own_cache: Path) -> None:
    first = probe.verdict(OPENCL[0])
    assert own_cache.is_file()
    probe.forget()  # as a new process would start
    built = probe.probes_built
    second = probe.verdict(OPENCL[0])
    assert probe.probes_built == built
    assert second.cached and (second.usable, second.problem) == (first.usable, first.problem)
    assert second.probe_ms == first.probe_ms


def test_driver_environment_is_part_of_the_cache_key(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = probe.cache_key(OPENCL[0])
    monkeypatch.setenv("POCL_DEBUG", "0")
    assert probe.cache_key(OPENCL[0]) != before
    monkeypatch.delenv("POCL_DEBUG")
    monkeypatch.setenv("MESHGPU_UNRELATED", "1")
    assert probe.cache_key(OPENCL[0]) == before


def test_an_unreadable_cache_is_ignored_and_rewritten(own_cache: Path) -> None:
    own_cache.write_text("{not json", encoding="utf-8")
    assert probe.verdict(OPENCL[0]).cached is False
    assert len(json.loads(own_cache.read_text(encoding="utf-8"))) == 1


@pytest.fixture
def wrong_results(own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OpenCL device computes one element of every output wrong (an executor hook)."""
    run = OpenCLSession.run

    def corrupted(self: OpenCLSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = run(self, feeds)
        first = next(iter(outputs))
        outputs[first] = outputs[first].copy()
        outputs[first].reshape(-1)[0] += 0.5
        return outputs

    monkeypatch.setattr(OpenCLSession, "run", corrupted)


@pytest.mark.usefixtures("wrong_results")
def test_a_device_that_computes_wrong_results_is_caught_and_never_used() -> None:
    for device in OPENCL:
        verdict = probe.verdict(device)
        assert not verdict.usable
        assert verdict.problem is not None and verdict.problem.startswith("wrong results")
        assert "numpy computes" in verdict.problem
    session = inference.load("digits")  # auto
    assert session.backend == "onnxruntime"
    assert "no usable OpenCL device" in session.backend_reason
    assert "wrong results" in session.backend_reason
    with pytest.raises(DeviceError, match="wrong results"):
        inference.load("digits", backend="opencl")
    with pytest.raises(DeviceError, match="failed its probe: wrong results"):
        inference.load("digits", device=OPENCL[0].id, backend="opencl")
    with pytest.raises(DeviceError, match="no usable OpenCL device"):
        programs.default_device()


def _failing_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every kernel build fails as an old driver's does (the probe passed)."""

    def fail(*args: object, **kwargs: object) -> cl.Program:
        raise cl.RuntimeError(
            "clBuildProgram failed: BUILD_PROGRAM_FAILURE - clBuildProgram failed\n\n"
            "Build on <pyopencl.Device 'old card'>:\n\n"
            "error: unknown target CPU 'generic'\n(options: -cl-mad-enable)"
        )

    monkeypatch.setattr(programs, "program_for", fail)


def test_a_model_that_fails_to_build_on_a_usable_device_falls_back_under_auto(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    device = next(d for d in OPENCL if probe.verdict(d).usable)
    model, feeds, expected = probe.probe_case()  # static shapes: kernels built at load
    _failing_builds(monkeypatch)
    with pytest.raises(DeviceError, match=r"could not build this model.*unknown target CPU"):
        inference.load(model, backend="opencl", device=device.id)
    caplog.set_level("WARNING", logger="meshgpu.inference")
    session = inference.load(model, device=device.id)
    assert session.backend == "onnxruntime"
    assert "could not build this model" in session.backend_reason
    assert "error: unknown target CPU 'generic'" in session.backend_reason
    np.testing.assert_allclose(session.run(feeds)["y"], expected, rtol=1e-4, atol=1e-5)
    failing = session_module.failing_models()
    assert list(failing) == [(device.id, session.digest)]
    again = inference.load(model, device=device.id)  # remembered: nothing rebuilt, logged once
    assert again.backend == "onnxruntime"
    assert sum("could not build" in record.getMessage() for record in caplog.records) == 1


def test_a_model_that_fails_at_its_first_run_switches_to_onnxruntime(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = next(d for d in OPENCL if probe.verdict(d).usable)
    pixels = np.load(Path(inference.__file__).parent / "models" / "digits_test.npz")["pixels"]
    reference = inference.load("digits", backend="onnxruntime").run({"pixels": pixels[:5]})
    strict = inference.load("digits", backend="opencl", device=device.id)
    auto = inference.load("digits", device=device.id)
    assert auto.backend == "opencl"  # symbolic batch: its kernels are built at the first run
    _failing_builds(monkeypatch)
    with pytest.raises(DeviceError, match="failed running this model"):
        strict.run({"pixels": pixels[:5]})
    outputs = auto.run({"pixels": pixels[:5]})
    assert auto.backend == "onnxruntime" and auto.device.id == "onnxruntime:cpu"
    assert "failed running this model" in auto.backend_reason
    np.testing.assert_allclose(outputs["probabilities"], reference["probabilities"], atol=1e-5)
    assert (device.id, auto.digest) in session_module.failing_models()


@pytest.mark.skipif(
    not any(device.platform == probe.POCL_PLATFORM for device in OPENCL), reason="needs PoCL"
)
def test_broken_pocl_is_reported_unusable_with_the_cause_and_what_to_install(
    tmp_path: Path,
) -> None:
    listed = meshgpu_cli("devices", "--json", env=BROKEN_POCL, cache=tmp_path)
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["devices"]
    pocl = [entry for entry in entries if entry["platform"] == probe.POCL_PLATFORM]
    assert pocl
    for entry in pocl:
        assert entry["usable"] is False
        assert "-cl-std=CL9.9" in entry["problem"]
        assert "apt-get install pocl-opencl-icd" in entry["advice"]
        assert entry["probe_ms"] > 0
    assert entries[-1]["id"] == "onnxruntime:cpu" and entries[-1]["usable"] is True
    if all(device.platform == probe.POCL_PLATFORM for device in OPENCL):
        checked = meshgpu_cli("devices", "--check", "--json", env=BROKEN_POCL, cache=tmp_path)
        again = json.loads(checked.stdout)["devices"]
        assert checked.returncode == 1
        assert all(entry["probe_cached"] for entry in again)  # the first call's verdicts
        assert [e["problem"] for e in again] == [e["problem"] for e in entries]
    table = meshgpu_cli("devices", env=BROKEN_POCL, cache=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "usable" in table.stdout and "pocl-opencl-icd" in table.stdout + table.stderr


def test_meshgpu_run_under_auto_succeeds_on_onnxruntime_when_every_device_is_broken(
    tmp_path: Path,
) -> None:
    pixels = tmp_path / "pixels.npy"
    data = np.load(Path(inference.__file__).parent / "models" / "digits_test.npz")
    np.save(pixels, data["pixels"][:4])
    ran = meshgpu_cli(
        "run", "digits", "--input", f"pixels={pixels}", "--json", env=BROKEN_POCL, cache=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    if all(device.platform == probe.POCL_PLATFORM for device in OPENCL):
        assert summary["backend"] == "onnxruntime"
        assert "no usable OpenCL device" in summary["backend_reason"]
    predictions = np.argmax(summary["outputs"]["probabilities"]["values"], axis=1)
    assert list(predictions) == list(data["labels"][:4])
    if any(device.platform != probe.POCL_PLATFORM for device in OPENCL):
        return  # a vendor driver is not broken by POCL_EXTRA_BUILD_FLAGS
    strict = meshgpu_cli(
        "run",
        "digits",
        "-i",
        f"pixels={pixels}",
        "--backend",
        "opencl",
        env=BROKEN_POCL,
        cache=tmp_path,
    )
    assert strict.returncode == 1
    assert "DeviceError" in strict.stderr and "-cl-std=CL9.9" in strict.stderr


def test_each_device_is_judged_on_its_own(own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One broken device among several (the PoCL from pip beside the distribution's, as on
    CI machines whose CPU the former cannot build for): only that one is left out."""
    from meshgpu.inference.devices import default_device, opencl_device

    broken = opencl_device(OPENCL[0]).int_ptr
    run = OpenCLSession.run

    def corrupted_on_one(
        self: OpenCLSession, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        outputs = run(self, feeds)
        if self.device.int_ptr == broken:
            outputs = {name: value + 1.0 for name, value in outputs.items()}
        return outputs

    monkeypatch.setattr(OpenCLSession, "run", corrupted_on_one)
    assert not probe.verdict(OPENCL[0]).usable
    others = [device for device in OPENCL[1:] if probe.verdict(device).usable]
    if not others:
        with pytest.raises(DeviceError, match=f"{OPENCL[0].id} .*wrong results"):
            default_device("opencl")
        return
    assert default_device("opencl") in others
    session = inference.load("digits")
    assert session.backend == "opencl" and session.device in others


CRASHING_PROBE = """
import os
from meshgpu.inference import devices, probe
probe._problem = lambda device: os._exit(3)  # the driver takes the process down
probe.verdict(next(d for d in devices() if d.backend == "opencl"))
"""


def test_a_driver_that_crashes_the_probe_costs_two_starts_not_every_start(
    own_cache: Path,
) -> None:
    environment = {**os.environ, "MESHGPU_CACHE_DIR": str(own_cache.parent)}
    for start in range(probe.UNFINISHED_PROBES_ALLOWED):
        crashed = subprocess.run(
            [sys.executable, "-c", CRASHING_PROBE], env=environment, timeout=120, check=False
        )
        assert crashed.returncode == 3
        probe.forget()
        marker = json.loads(own_cache.read_text(encoding="utf-8"))[probe.cache_key(OPENCL[0])]
        assert marker["unfinished"] == start and "usable" not in marker
    built = probe.probes_built
    verdict = probe.verdict(OPENCL[0])
    assert probe.probes_built == built  # not a third try
    assert not verdict.usable and verdict.problem is not None
    assert "did not finish 2 times" in verdict.problem
    probe.forget()
    assert probe.verdict(OPENCL[0]).cached  # and it stays so until the cache is deleted


def test_an_interrupted_probe_is_not_counted_as_a_crash(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(device: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(probe, "_problem", interrupted)
    with pytest.raises(KeyboardInterrupt):
        probe.verdict(OPENCL[0])
    assert probe.cache_key(OPENCL[0]) not in json.loads(own_cache.read_text(encoding="utf-8"))


def test_a_probe_says_it_is_building_before_it_builds(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cold probe builds kernels for a minute or more on a loaded machine; `meshgpu join`
    printed nothing meanwhile and looked hung. The line comes before the work, naming
    the cache that makes later starts skip it; a cached verdict says nothing."""
    said_before: list[bool] = []

    def problem(device: object) -> None:
        said_before.append(any("probing OpenCL" in r.getMessage() for r in caplog.records))

    monkeypatch.setattr(probe, "_problem", problem)
    caplog.set_level("INFO", logger="meshgpu.inference")
    assert probe.verdict(OPENCL[0]).usable
    assert said_before == [True]
    line = next(r.getMessage() for r in caplog.records if "probing OpenCL" in r.getMessage())
    assert OPENCL[0].id in line and str(own_cache) in line
    probe.forget()
    caplog.clear()
    assert probe.verdict(OPENCL[0]).cached
    assert not any("probing OpenCL" in r.getMessage() for r in caplog.records)
