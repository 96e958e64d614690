"""Launch shapes chosen per device by measuring them once, and kept on disk.

A lowering may offer a launch in several *variants*: the same kernel and arguments with
another grid and other values of its work-size arguments (``matmul_tiles``: how many
8-column blocks one work-item takes; ``conv_gemm6``: how many 16-column tiles and how many
6-row tiles). Which is fastest depends on the device (a CPU wants few, large work-groups, a
GPU many) and on the shape, so the first plan that needs a choice times every variant on
the plan's own buffers with a profiling queue (one warm-up run, then the best of five, in
rounds over the variants) and keeps the winner in ``tuning.json`` beside the program
binaries (``$MESHGPU_CACHE_DIR``, else ``$XDG_CACHE_HOME/meshgpu``, else
``~/.cache/meshgpu``), keyed by the device, its driver, the kernel and the shape. Each entry
records what the search cost (``search_ms``); a second process, or a second plan of the
same shape, reads the choice and measures nothing.

Where the lowering's own rule already picks a launch shape (the convolutions), that choice
is the first variant and ``prefer_first`` keeps it unless another is faster by ``MARGIN``:
a search on a busy machine measures noise too, and a near-tie is not worth leaving a rule
that was measured with care.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyopencl as cl

from meshgpu.inference.opencl.programs import binary_cache_folder

CACHE_FILE = "tuning.json"

#: Timed runs per variant (after one warm-up run), taken in rounds over all the variants
#: so that a spell of load on a shared machine slows every variant, not one; the fastest
#: run of each counts.
TIMED_RUNS = 5

#: How much faster than the first variant another must be to replace it (``prefer_first``).
MARGIN = 0.1

#: Launches at least this long (us, the fastest variant) must keep every compute unit busy:
#: a variant with fewer work-groups than the device has compute units is not chosen for
#: them. A search on a busy machine cannot see what the idle cores would have given (the
#: other processes hold them either way), and one that kept PoCL's 2-core device at one
#: work-group ran ResNet-50's largest convolutions on one core once the machine was quiet.
#: Below it, one work-group may win: waking a second thread costs more than it saves.
SERIAL_US = 20.0

#: Part of every cache key: choices recorded under an earlier choice rule are searched again.
RULE_VERSION = 2

_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] | None = None
searches = 0
"""Searches this process ran (a cached choice costs none)."""


@dataclass(frozen=True)
class Variant:
    """One way to launch: its grid, and the value of the kernel argument at ``position``
    (and of the arguments at the positions in ``more``)."""

    grid: tuple[int, ...]
    position: int
    value: int
    more: tuple[tuple[int, int], ...] = ()

    @property
    def label(self) -> str:
        """What the cache records for this variant: its value(s)."""
        return ",".join(str(v) for v in (self.value, *(value for _, value in self.more)))

    def bind(self, kernel: cl.Kernel) -> None:
        for position, value in ((self.position, self.value), *self.more):
            kernel.set_arg(position, np.int32(value))


def _matches(variant: Variant, entry: dict[str, Any]) -> bool:
    return variant.label == str(entry.get("value"))


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
    shape_text = "x".join(map(str, shape))
    return f"v{RULE_VERSION} | {_device_key(device)} | {kernel_name} | {shape_text}"


def is_cached(
    device: cl.Device, kernel_name: str, shape: tuple[int, ...], variants: list[Variant]
) -> bool:
    """Whether a choice among ``variants`` is known for this device, kernel and shape."""
    with _lock:
        entry = _read().get(_key(device, kernel_name, shape))
    return isinstance(entry, dict) and any(_matches(v, entry) for v in variants)


def pick(
    timings: list[float],
    prefer_first: bool,
    groups: list[int] | None = None,
    compute_units: int = 1,
) -> int:
    """Index of the variant to keep: the fastest, or with ``prefer_first`` the first unless
    the fastest beats it by ``MARGIN``; among those with at least ``compute_units``
    work-groups (``groups``) when the launch takes ``SERIAL_US`` or more (else among those
    with the most)."""
    candidates = list(range(len(timings)))
    if groups is not None and compute_units > 1 and min(timings) >= SERIAL_US:
        parallel = [i for i in candidates if groups[i] >= compute_units]
        most = max(groups)
        candidates = parallel or [i for i in candidates if groups[i] == most]
    fastest = min(candidates, key=lambda i: timings[i])
    if prefer_first and 0 in candidates and timings[fastest] > timings[0] * (1.0 - MARGIN):
        return 0
    return fastest


def work_groups(grid: tuple[int, ...], local: tuple[int, ...]) -> int:
    """How many work-groups a launch of ``grid`` in groups of ``local`` runs."""
    count = 1
    for size, group in zip(grid, local, strict=True):
        count *= -(-size // max(group, 1))
    return count


def choose(
    device: cl.Device,
    context: cl.Context,
    kernel: cl.Kernel,
    kernel_name: str,
    shape: tuple[int, ...],
    variants: list[Variant],
    local: tuple[int, ...],
    prefer_first: bool = False,
) -> Variant:
    """The variant to launch ``kernel`` with (its arguments already bound): the cached
    choice for this device, kernel and shape, else the fastest measured now (with
    ``prefer_first``, the first unless another beats it by ``MARGIN``)."""
    global searches
    key = _key(device, kernel_name, shape)
    with _lock:
        entry = _read().get(key)
        if isinstance(entry, dict):
            for variant in variants:
                if _matches(variant, entry):
                    variant.bind(kernel)
                    return variant
    started = time.perf_counter()
    queue = cl.CommandQueue(context, properties=cl.command_queue_properties.PROFILING_ENABLE)
    for variant in variants:  # warm-up
        variant.bind(kernel)
        cl.enqueue_nd_range_kernel(queue, kernel, variant.grid, local)
    queue.finish()
    runs: list[list[float]] = [[] for _ in variants]
    for _ in range(TIMED_RUNS):  # rounds over every variant: a busy spell hits them all
        events = []
        for variant in variants:
            variant.bind(kernel)
            events.append(cl.enqueue_nd_range_kernel(queue, kernel, variant.grid, local))
        queue.finish()
        for times, event in zip(runs, events, strict=True):
            times.append((event.profile.end - event.profile.start) / 1000.0)
    timings = [min(times) for times in runs]
    groups = [work_groups(v.grid, local) for v in variants]
    best = variants[pick(timings, prefer_first, groups, device.max_compute_units)]
    best.bind(kernel)
    entry = {
        "value": best.value if not best.more else best.label,
        "grid": list(best.grid),
        "times_us": {v.label: round(t, 1) for v, t in zip(variants, timings, strict=True)},
        "search_ms": round((time.perf_counter() - started) * 1000.0, 2),
    }
    with _lock:
        searches += 1
        _read()[key] = entry
        _write({key: entry})
    return best


def alternating_medians_ms(
    runs: list[Callable[[], None]], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """The median time in ms of each of ``runs``, timed in turn ``rounds`` times after one
    warm-up each (turns, so that a change in the machine's load hits every run alike). The
    ``clock`` is wall time by default; ``time.process_time`` gives the CPU time every thread
    of the process spent, which the machine's other work does not inflate."""
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for index, run in enumerate(runs):
            started = clock()
            run()
            times[index].append((clock() - started) * 1000.0)
    return [float(np.median(t)) for t in times]
