"""The synthetic device ``synthetic:MS``: a slot held for MS milliseconds, no inference.

For benchmarks and tests only (``meshgpu join --device synthetic:20``). It lets a loopback
mesh of many daemons on a small machine measure the mesh itself (dispatch, scaling,
failover) with a known, fixed service time: a run sleeps in its worker thread, so it
occupies one of the node's ``slots`` exactly like a real run would, but costs no CPU. The
model file is never parsed; the "outputs" are the inputs, returned as they came, so a
caller can check that the right task's data went through.

With ``MESHGPU_SYNTHETIC_RUN_LOG`` set to a file path (in the daemon's environment), each
finished run appends one line, ``<first element of the first input> <pid>``, to that file
(opened in append mode, one small write per line). Benchmarks and tests that number their
inputs count executions with it, duplicates included, across daemons that were SIGKILLed.

With ``MESHGPU_SYNTHETIC_HOLD`` set to a file path, a run whose first input element is
N or more waits before its service time while that file exists and holds the number N,
each in its worker thread (never on the event loop: the service time must be 1 ms or
more). Tests that number their inputs use it to have some tasks certainly not done at a
moment of their choosing (Ctrl-C on a command with tasks in flight), whatever the
machine's load.

Why a device and not a backend: the device is what holds a slot for a service time, and
``--device`` is already the per-node knob that benchmarks vary; the backend choice
(``--backend``) stays about real engines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeGuard

import numpy as np

from meshgpu.errors import DeviceError

PREFIX = "synthetic:"
RUN_LOG_VARIABLE = "MESHGPU_SYNTHETIC_RUN_LOG"
HOLD_VARIABLE = "MESHGPU_SYNTHETIC_HOLD"
HOLD_POLL_S = 0.01


def is_synthetic(device: str | None) -> TypeGuard[str]:
    """True when ``device`` names the synthetic device (``synthetic:MS``)."""
    return device is not None and device.startswith(PREFIX)


def service_seconds(device: str) -> float:
    """The service time of ``synthetic:MS`` in seconds; raises DeviceError if malformed."""
    text = device[len(PREFIX) :]
    try:
        milliseconds = float(text)
    except ValueError:
        milliseconds = -1.0
    if not milliseconds >= 0.0 or milliseconds > 3_600_000:
        raise DeviceError(
            f"synthetic device {device!r} needs a service time in milliseconds, "
            "0 to 3600000: write e.g. 'synthetic:20'"
        )
    return milliseconds / 1000.0


class SyntheticSession:
    """Session interface of the real backends (``backend``, ``run``), minus the model.

    Thread-safe: ``run`` only sleeps, so the executor runs it without a lock and up to
    ``slots`` runs overlap, as on a device with ``slots`` queues.
    """

    backend = "synthetic"

    def __init__(self, device: str, model_path: Path | None = None) -> None:
        del model_path  # never read: the service time is all this device models
        self.device = device
        self.seconds = service_seconds(device)
        self.peak_device_bytes = 0
        self.run_log = os.environ.get(RUN_LOG_VARIABLE) or None
        self.hold = os.environ.get(HOLD_VARIABLE) or None
        if self.hold is not None:
            from meshgpu.daemon.execution import INLINE_RUN_S

            if self.seconds < INLINE_RUN_S:  # such a run may go on the event loop: held
                raise DeviceError(  # there, it would stop the daemon, not just its slot
                    f"{HOLD_VARIABLE} needs a service time of at least "
                    f"{INLINE_RUN_S * 1000:g} ms, not {device!r}"
                )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Hold the calling thread for the service time; return the inputs as outputs."""
        if self.hold is not None:
            while _held(Path(self.hold), _first_element(feeds)):
                time.sleep(HOLD_POLL_S)
        time.sleep(self.seconds)
        if self.run_log is not None:
            self._log_run(self.run_log, feeds)
        return dict(feeds)

    @staticmethod
    def _log_run(path: str, feeds: Mapping[str, np.ndarray]) -> None:
        first = _first_element(feeds)
        label = "-" if first is None else repr(first)
        line = f"{label} {os.getpid()}\n".encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)


def _first_element(feeds: Mapping[str, np.ndarray]) -> float | None:
    """The first element of the first input (how tests and benchmarks number runs)."""
    first = next(iter(feeds.values()), None)
    return float(first.flat[0]) if first is not None and first.size else None


def _held(hold: Path, first: float | None) -> bool:
    """Whether a run must wait: ``hold`` exists and holds a number no greater than the
    run's first input element (see the module docstring)."""
    try:
        text = hold.read_text()
    except FileNotFoundError:
        return False
    try:
        threshold = float(text)
    except ValueError as error:
        raise DeviceError(f"{HOLD_VARIABLE} file {hold} must hold a number: {error}") from None
    return first is not None and first >= threshold
