"""One OpenCL context per device and one built program per (device, source, options).

Compiling is the slow part of starting a session (PoCL runs clang and LLVM), so a program is
built at most once per process and device, and pyopencl's on-disk binary cache
(``~/.cache/pyopencl``) plus PoCL's kernel cache (``~/.cache/pocl``) make a second process
skip the compiler. Every kernel is launched with a fixed work-group size per kernel so that
PoCL, which specialises each kernel per work-group size, builds one variant only.
"""

from __future__ import annotations

import threading
from typing import Any

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
    context = context_for(device)
    program = cl.Program(context, source).build(options=list(BUILD_OPTIONS + options))
    with _lock:
        _programs.setdefault(key, program)
        return _programs[key]


def default_device() -> cl.Device:
    """The first usable OpenCL device (GPUs first; each one probed: meshgpu.inference.probe)."""
    from meshgpu.inference.devices import default_device as usable_default
    from meshgpu.inference.devices import opencl_device

    device: cl.Device = opencl_device(usable_default("opencl"))
    return device
