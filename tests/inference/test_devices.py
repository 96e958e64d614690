"""Device listing and selection: what `meshgpu devices` and `load(device=...)` rely on."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from meshgpu.cli import main
from meshgpu.errors import DeviceError
from meshgpu.inference import DeviceInfo, devices, select_device


def test_every_install_has_an_opencl_device_and_onnxruntime_cpu() -> None:
    found = devices()
    assert any(device.backend == "opencl" for device in found), (
        "pyopencl[pocl] should always give at least one OpenCL device"
    )
    assert found[-1].id == "onnxruntime:cpu"
    assert len({device.id for device in found}) == len(found)


@pytest.mark.parametrize("device", devices(), ids=lambda device: device.id)
def test_capabilities_are_plausible(device: DeviceInfo) -> None:
    assert device.name and device.vendor and device.driver_version
    assert device.compute_units >= 1
    assert device.global_memory_bytes > 0
    assert 0 < device.max_allocation_bytes <= device.global_memory_bytes
    assert device.local_memory_bytes >= 0
    assert device.type in {"CPU", "GPU", "ACCELERATOR", "CUSTOM", "DEFAULT"} or "+" in device.type


def test_device_info_is_immutable_plain_data() -> None:
    device = devices()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        device.name = "renamed"  # type: ignore[misc]
    assert json.loads(json.dumps(device.as_dict()))["id"] == device.id


def test_select_by_id_name_piece_and_backend() -> None:
    opencl = next(device for device in devices() if device.backend == "opencl")
    assert select_device(opencl.id) == opencl
    assert select_device("opencl:" + opencl.name.split()[0].lower()).backend == "opencl"
    assert select_device("opencl").backend == "opencl"
    assert select_device("onnxruntime:cpu").backend == "onnxruntime"
    assert select_device(opencl) is opencl


@pytest.mark.parametrize("spec", ["opencl:99", "cuda:0", "opencl:no-such-card", ""])
def test_unknown_device_lists_the_available_ones(spec: str) -> None:
    with pytest.raises(DeviceError) as raised:
        select_device(spec)
    message = str(raised.value)
    assert repr(spec) in message
    assert "onnxruntime:cpu" in message  # the list of what exists


def test_cli_devices_json_matches_the_library() -> None:
    result = CliRunner().invoke(main, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["devices"]
    assert [entry["id"] for entry in listed] == [device.id for device in devices()]
    assert listed[0]["global_memory_bytes"] == devices()[0].global_memory_bytes


def test_cli_devices_table_names_every_device() -> None:
    result = CliRunner().invoke(main, ["devices"])
    assert result.exit_code == 0, result.output
    for device in devices():
        assert device.id in result.output
