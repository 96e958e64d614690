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
    """The first OpenCL device of the first platform that has one."""
    for platform in cl.get_platforms():
        found = platform.get_devices()
        if found:
            return found[0]
    from meshgpu.errors import DeviceError

    raise DeviceError("no OpenCL device found; install pyopencl[pocl] for a CPU device")
