"""Launch shapes chosen per device by measuring them once, and kept on disk.

A lowering may offer a launch in several *variants*: the same kernel and arguments with
another grid and another value of one work-size argument (``matmul_tiles``: how many 8-column
blocks one work-item takes). Which is fastest depends on the device (a CPU wants few, large
work-groups, a GPU many) and on the shape, so the first plan that needs a choice times every
variant on the plan's own buffers with a profiling queue (one warm-up run, then the best of
three) and keeps the winner in ``tuning.json`` beside the program binaries (``$MESHGPU_CACHE_DIR``,
else ``$XDG_CACHE_HOME/meshgpu``, else ``~/.cache/meshgpu``), keyed by the device, its driver,
the kernel and the shape. Each entry records what the search cost (``search_ms``); a second
process, or a second plan of the same shape, reads the choice and measures nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyopencl as cl

from meshgpu.inference.opencl.programs import binary_cache_folder

CACHE_FILE = "tuning.json"

#: Timed runs per variant (after one warm-up run); the fastest counts.
TIMED_RUNS = 3

_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] | None = None
searches = 0
"""Searches this process ran (a cached choice costs none)."""


@dataclass(frozen=True)
class Variant:
    """One way to launch: its grid, and the value of the kernel argument at ``position``."""

    grid: tuple[int, ...]
    position: int
    value: int


def cache_path() -> Path:
    return binary_cache_folder().parent / CACHE_FILE


def _device_key(device: cl.Device) -> str:
    return " | ".join(
        [device.name, device.driver_version, device.platform.name, device.platform.version]
    )


def _read() -> dict[str, dict[str, Any]]:
    global _memory
    if _memory is None:
        try:
            loaded = json.loads(cache_path().read_text())
            _memory = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _memory = {}
    return _memory


def _write(entries: dict[str, dict[str, Any]]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            current = json.loads(path.read_text())  # another process's choices too
            if not isinstance(current, dict):
                current = {}
        except (OSError, ValueError):
            current = {}
        current.update(entries)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
            json.dump(current, handle, indent=0, sort_keys=True)
        os.replace(handle.name, path)
    except OSError:
        pass  # the cache is an optimisation: the next process searches again


def reset_memory() -> None:
    """Forget the choices read into this process (tests point the cache elsewhere)."""
    global _memory
    with _lock:
        _memory = None


def _key(device: cl.Device, kernel_name: str, shape: tuple[int, ...]) -> str:
    return f"{_device_key(device)} | {kernel_name} | {'x'.join(map(str, shape))}"


def is_cached(
    device: cl.Device, kernel_name: str, shape: tuple[int, ...], variants: list[Variant]
) -> bool:
    """Whether a choice among ``variants`` is known for this device, kernel and shape."""
    with _lock:
        entry = _read().get(_key(device, kernel_name, shape))
    return isinstance(entry, dict) and any(v.value == entry.get("value") for v in variants)


def choose(
    device: cl.Device,
    context: cl.Context,
    kernel: cl.Kernel,
    kernel_name: str,
    shape: tuple[int, ...],
    variants: list[Variant],
    local: tuple[int, ...],
) -> Variant:
    """The variant to launch ``kernel`` with (its arguments already bound): the cached
    choice for this device, kernel and shape, else the fastest measured now."""
    global searches
    key = _key(device, kernel_name, shape)
    with _lock:
        entry = _read().get(key)
        if isinstance(entry, dict):
            for variant in variants:
                if variant.value == entry.get("value"):
                    kernel.set_arg(variant.position, np.int32(variant.value))
                    return variant
    started = time.perf_counter()
    queue = cl.CommandQueue(context, properties=cl.command_queue_properties.PROFILING_ENABLE)
    timings = []
    for variant in variants:
        kernel.set_arg(variant.position, np.int32(variant.value))
        cl.enqueue_nd_range_kernel(queue, kernel, variant.grid, local)  # warm-up
        events = [
            cl.enqueue_nd_range_kernel(queue, kernel, variant.grid, local)
            for _ in range(TIMED_RUNS)
        ]
        queue.finish()
        timings.append(min(e.profile.end - e.profile.start for e in events) / 1000.0)
    best = variants[int(np.argmin(timings))]
    kernel.set_arg(best.position, np.int32(best.value))
    entry = {
        "value": best.value,
        "grid": list(best.grid),
        "times_us": {str(v.value): round(t, 1) for v, t in zip(variants, timings, strict=True)},
        "search_ms": round((time.perf_counter() - started) * 1000.0, 2),
    }
    with _lock:
        searches += 1
        _read()[key] = entry
        _write({key: entry})
    return best
