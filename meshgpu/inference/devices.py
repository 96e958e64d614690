"""The devices this machine can run inference on, described as plain data.

Every OpenCL device of every platform is listed (PoCL's CPU device comes with
``pyopencl[pocl]``, so a bare ``pip install`` always has one), followed by onnxruntime's CPU
provider. Each is a frozen :class:`DeviceInfo` so it can be compared, gossiped (the daemon
turns it into load-vector capabilities) and printed without holding OpenCL handles.

Device identifiers are stable strings: ``"opencl:<index>"`` numbers the OpenCL devices in
platform order then device order, and ``"onnxruntime:cpu"`` is the onnxruntime CPU provider.
:func:`select_device` also accepts a case-insensitive piece of a device name
(``"opencl:pthread"``, ``"opencl:nvidia"``) so that scripts need not depend on the order.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import Any, Literal

from meshgpu.errors import DeviceError

BackendName = Literal["opencl", "onnxruntime"]
ONNXRUNTIME_CPU_ID = "onnxruntime:cpu"

#: PoCL's devices when the user has not chosen them (``POCL_DEVICES`` unset): the threaded
#: CPU device PoCL lists by default, and its ``basic`` device beside it: the same CPU, each
#: command run in the thread that waits for it. The OpenCL executor runs a plan whose
#: launches are too small to pay for waking PoCL's worker threads on that companion
#: (:func:`inline_companion`; docs/opencl-engine.md, *Small plans run inline*). PoCL reads
#: the variable once, when a process first enumerates platforms; set it yourself to list
#: PoCL's other drivers (``"pthread basic cuda"``).
POCL_DEVICES_DEFAULT = "pthread basic"

#: Name prefixes of PoCL's threaded CPU device and of its in-thread twin (PoCL 3 names,
#: then the names PoCL 4 gave them).
_POCL_THREADED = ("pthread-", "cpu-")
_POCL_INLINE = ("basic-", "cpu-minimal-")
_POCL_PLATFORM = "Portable Computing Language"

if "POCL_DEVICES" not in os.environ:
    # On import, before anything here enumerates platforms; without effect when this
    # process's PoCL is already initialised (then no companion is found).
    os.environ["POCL_DEVICES"] = POCL_DEVICES_DEFAULT


@dataclass(frozen=True)
class DeviceInfo:
    """One device and what it can do.

    Memory sizes are in bytes. ``max_allocation_bytes`` is the largest single buffer the
    device accepts (OpenCL's ``CL_DEVICE_MAX_MEM_ALLOC_SIZE``); for onnxruntime it equals
    ``global_memory_bytes``. ``platform_index``/``device_index`` locate an OpenCL device in
    ``pyopencl.get_platforms()``; they are -1 for onnxruntime.
    """

    id: str
    backend: BackendName
    name: str
    vendor: str
    type: str  # "CPU", "GPU", "ACCELERATOR", "DEFAULT" or "CUSTOM"
    platform: str
    compute_units: int
    global_memory_bytes: int
    local_memory_bytes: int
    max_allocation_bytes: int
    fp16: bool
    fp64: bool
    driver_version: str
    version: str  # the OpenCL version the device reports, or onnxruntime's version
    platform_index: int = -1
    device_index: int = -1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by ``meshgpu devices --json`` and the daemon's gossip)."""
        return {field: getattr(self, field) for field in self.__dataclass_fields__}


def _opencl_type_name(device_type: int) -> str:
    import pyopencl as cl

    names = []
    for flag, name in (
        (cl.device_type.GPU, "GPU"),
        (cl.device_type.CPU, "CPU"),
        (cl.device_type.ACCELERATOR, "ACCELERATOR"),
        (cl.device_type.CUSTOM, "CUSTOM"),
    ):
        if device_type & flag:
            names.append(name)
    return "+".join(names) or "DEFAULT"


def _opencl_devices() -> list[DeviceInfo]:
    """Every OpenCL device; an empty list when no platform is installed."""
    try:
        import pyopencl as cl
    except ImportError:
        return []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # no ICD loader entry at all: CL_PLATFORM_NOT_FOUND_KHR
        return []
    found: list[DeviceInfo] = []
    for platform_index, cl_platform in enumerate(platforms):
        try:
            cl_devices = cl_platform.get_devices()
        except cl.Error:  # a platform with no device reports DEVICE_NOT_FOUND
            continue
        for device_index, device in enumerate(cl_devices):
            if _threaded_twin(device, cl_devices) is not None:
                continue  # an execution mode of its twin, not a device of its own
            extensions = device.extensions.split()
            found.append(
                DeviceInfo(
                    id=f"opencl:{len(found)}",
                    backend="opencl",
                    name=device.name.strip(),
                    vendor=device.vendor.strip(),
                    type=_opencl_type_name(device.type),
                    platform=cl_platform.name.strip(),
                    compute_units=int(device.max_compute_units),
                    global_memory_bytes=int(device.global_mem_size),
                    local_memory_bytes=int(device.local_mem_size),
                    max_allocation_bytes=int(device.max_mem_alloc_size),
                    fp16="cl_khr_fp16" in extensions,
                    fp64="cl_khr_fp64" in extensions or bool(device.double_fp_config),
                    driver_version=device.driver_version.strip(),
                    version=device.version.strip(),
                    platform_index=platform_index,
                    device_index=device_index,
                )
            )
    return found


def _pocl_role(device: Any) -> tuple[str, str] | None:
    """("threaded" or "inline", the rest of the name) for PoCL's CPU devices, else None."""
    if not str(device.platform.name).startswith(_POCL_PLATFORM):
        return None
    name = str(device.name).strip()
    for prefix in _POCL_INLINE:  # first: "cpu-minimal-" also starts with "cpu-"
        if name.startswith(prefix):
            return "inline", name[len(prefix) :]
    for prefix in _POCL_THREADED:
        if name.startswith(prefix):
            return "threaded", name[len(prefix) :]
    return None


def _threaded_twin(device: Any, platform_devices: list[Any]) -> Any:
    """The threaded PoCL device that ``device`` runs inline for, or None."""
    role = _pocl_role(device)
    if role is None or role[0] != "inline":
        return None
    for other in platform_devices:
        if _pocl_role(other) == ("threaded", role[1]):
            return other
    return None


def inline_companion(device: Any) -> Any:
    """PoCL's in-thread device for the same CPU as threaded ``device``, or None.

    Invoked by the OpenCL executor when it plans: a plan of many tiny launches runs faster
    where no worker thread has to wake for each one. Not listed by :func:`devices`.
    """
    import pyopencl as cl

    role = _pocl_role(device)
    if role is None or role[0] != "threaded":
        return None
    try:
        platform_devices = device.platform.get_devices()
    except cl.Error:
        return None
    for other in platform_devices:
        if _pocl_role(other) == ("inline", role[1]):
            return other
    return None


def _cpuinfo_field(field: str, fallback: str) -> str:
    """A field of the first CPU in /proc/cpuinfo (``model name``, ``vendor_id``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return fallback


def _physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _onnxruntime_version() -> str | None:
    """onnxruntime's version from its installed metadata, or None when it is not installed.

    Read without importing onnxruntime: the import takes about a tenth of a second, and a
    process that runs on OpenCL (a restarted daemon's first inference) need not pay it.
    """
    from importlib import metadata

    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        pass
    for distribution in ("onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def _onnxruntime_cpu() -> DeviceInfo | None:
    version = _onnxruntime_version()
    if version is None:
        return None
    memory = _physical_memory_bytes()
    return DeviceInfo(
        id=ONNXRUNTIME_CPU_ID,
        backend="onnxruntime",
        name=_cpuinfo_field("model name", platform.processor() or platform.machine() or "CPU"),
        vendor=_cpuinfo_field("vendor_id", platform.machine()),
        type="CPU",
        platform="onnxruntime CPUExecutionProvider",
        compute_units=os.cpu_count() or 1,
        global_memory_bytes=memory,
        local_memory_bytes=0,
        max_allocation_bytes=memory,
        fp16=False,  # the CPU provider runs few kernels in fp16; do not advertise it
        fp64=True,
        driver_version=version,
        version=version,
    )


@functools.cache
def devices() -> tuple[DeviceInfo, ...]:
    """Every device on this machine: the OpenCL ones first, then onnxruntime's CPU.

    Enumerated once per process (drivers do not appear while a process runs).
    """
    found = _opencl_devices()
    onnxruntime_cpu = _onnxruntime_cpu()
    if onnxruntime_cpu is not None:
        found.append(onnxruntime_cpu)
    return tuple(found)


def default_device(backend: BackendName) -> DeviceInfo:
    """The device a backend uses when none is named: the first usable GPU, else the first
    usable device. OpenCL devices are probed (:mod:`meshgpu.inference.probe`) in that order
    until one passes; when none does, the :class:`DeviceError` names each one's problem."""
    candidates = [device for device in devices() if device.backend == backend]
    if not candidates:
        if backend == "opencl":
            raise DeviceError(
                "no OpenCL device found: install pyopencl with PoCL "
                "(pip install 'pyopencl[pocl]') or a vendor OpenCL driver, "
                "or use backend='onnxruntime'"
            )
        raise DeviceError("onnxruntime is not installed: pip install onnxruntime")
    gpus = [device for device in candidates if "GPU" in device.type]
    ordered = gpus + [device for device in candidates if device not in gpus]
    if backend != "opencl":
        return ordered[0]
    from meshgpu.inference.probe import verdict

    problems = []
    advice = ""
    for device in ordered:
        found = verdict(device)
        if found.usable:
            return device
        problems.append(f"{device.id} ({device.name}): {found.problem}")
        advice = advice or (found.advice or "")
    raise DeviceError("no usable OpenCL device: " + "; ".join(problems) + f"; {advice}")


def select_device(spec: str | DeviceInfo) -> DeviceInfo:
    """Resolve ``"opencl:0"``, ``"opencl:<name piece>"``, ``"opencl"``, ``"onnxruntime:cpu"``.

    A bare backend name picks that backend's :func:`default_device`. Raises
    :class:`DeviceError` listing the available ids when nothing matches.
    """
    if isinstance(spec, DeviceInfo):
        return spec
    text = spec.strip()
    known = devices()
    if text == "opencl":
        return default_device("opencl")
    if text == "onnxruntime":
        return default_device("onnxruntime")
    for device in known:
        if device.id == text:
            return device
    backend, _, selector = text.partition(":")
    if backend in ("opencl", "onnxruntime") and selector:
        matches = [
            device
            for device in known
            if device.backend == backend and selector.lower() in device.name.lower()
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DeviceError(
                f"device {spec!r} is ambiguous: it matches "
                + ", ".join(f"{device.id} ({device.name})" for device in matches)
                + "; use the numeric id"
            )
    available = ", ".join(f"{device.id} ({device.name})" for device in known) or "none"
    raise DeviceError(
        f"no device {spec!r}; available: {available}. "
        "Use 'opencl:<index>', 'opencl:<part of the name>' or 'onnxruntime:cpu'"
    )


def opencl_device(info: DeviceInfo) -> Any:
    """The ``pyopencl.Device`` an OpenCL :class:`DeviceInfo` describes."""
    if info.backend != "opencl":
        raise DeviceError(f"{info.id} is not an OpenCL device")
    import pyopencl as cl

    try:
        return cl.get_platforms()[info.platform_index].get_devices()[info.device_index]
    except (cl.Error, IndexError) as error:
        raise DeviceError(f"OpenCL device {info.id} ({info.name}) is gone: {error}") from error
