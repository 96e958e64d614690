"""One OpenCL context per device and one built program per (device, source, options).

Compiling is the slow part of starting a session (PoCL runs clang and LLVM), so a program is
built at most once per process and device, and its binary is kept on disk
(``kernels/`` beside the device-probe cache: ``$MESHGPU_CACHE_DIR``, else
``$XDG_CACHE_HOME/meshgpu``, else ``~/.cache/meshgpu``), keyed by the device, its driver and
platform versions, the build options and the source. A second process builds from that
binary: about 1 ms a program on PoCL, where pyopencl's own cache (still used on a miss)
spends 0.10-0.13 s in ``clBuildProgram`` per program (a BERT encoder's first run builds ten
programs). A binary the driver refuses is rebuilt from source and replaced. PoCL's kernel cache
(``~/.cache/pocl``) keeps the per-work-group-size specialisations; every kernel is launched
with a fixed work-group size per kernel so that PoCL builds one variant only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

import pyopencl as cl

#: Build options for every program. ``-cl-mad-enable`` lets ``a*b+c`` contract to an FMA;
#: fast-relaxed-math is avoided because it assumes no infinities (MaxPool starts at -inf).
BUILD_OPTIONS = ("-cl-mad-enable", "-cl-no-signed-zeros")

_lock = threading.Lock()
_contexts: dict[Any, cl.Context] = {}
_programs: dict[tuple[Any, str, tuple[str, ...]], cl.Program] = {}


def _device_key(device: cl.Device) -> Any:
    return device.int_ptr


def context_for(device: cl.Device) -> cl.Context:
    """The process-wide context for ``device`` (created on first use)."""
    with _lock:
        key = _device_key(device)
        context = _contexts.get(key)
        if context is None:
            context = cl.Context([device])
            _contexts[key] = context
        return context


def program_for(device: cl.Device, source: str, options: tuple[str, ...] = ()) -> cl.Program:
    """The built program for ``source`` on ``device``, compiled at most once per process."""
    key = (_device_key(device), source, options)
    with _lock:
        program = _programs.get(key)
    if program is not None:
        return program
    program = _build(device, source, list(BUILD_OPTIONS + options))
    with _lock:
        _programs.setdefault(key, program)
        return _programs[key]


def binary_cache_folder() -> Path:
    """Where program binaries are kept (module docstring)."""
    base = os.environ.get("MESHGPU_CACHE_DIR")
    if base:
        return Path(base) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "meshgpu" / "kernels"


def _binary_key(device: cl.Device, source: str, options: list[str]) -> str:
    identity = "\0".join(
        [
            device.name,
            device.vendor,
            device.version,
            device.driver_version,
            device.platform.name,
            device.platform.version,
            " ".join(options),
            cl.VERSION_TEXT,
            source,
        ]
    )
    return hashlib.sha256(identity.encode()).hexdigest()


def _build(device: cl.Device, source: str, options: list[str]) -> cl.Program:
    """The program built from its cached binary when there is one, else from source (and
    its binary saved). The cache is an optimisation: any failure to read or write it falls
    back to the compiler."""
    context = context_for(device)
    path = binary_cache_folder() / f"{_binary_key(device, source, options)}.bin"
    try:
        binary = path.read_bytes()
    except OSError:
        binary = None
    if binary:
        try:
            built: cl.Program = cl.Program(context, [device], [binary]).build(options=options)
            return built
        except cl.Error:
            pass  # a binary this driver no longer takes: rebuild it below
    # pyopencl's own cache (and PoCL's) still spare the compiler on a miss here
    program: cl.Program = cl.Program(context, source).build(options=options)
    try:
        (binary,) = cast(list[bytes], program.get_info(cl.program_info.BINARIES))
        if binary:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
                handle.write(binary)
            os.replace(handle.name, path)  # atomic: a concurrent reader sees all or nothing
    except (OSError, cl.Error, ValueError):
        pass
    return program


def default_device() -> cl.Device:
    """The first usable OpenCL device (GPUs first; each one probed: meshgpu.inference.probe)."""
    from meshgpu.inference.devices import default_device as usable_default
    from meshgpu.inference.devices import opencl_device

    device: cl.Device = opencl_device(usable_default("opencl"))
    return device
