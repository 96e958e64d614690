"""Devices are probed, not trusted: does an OpenCL device build and compute correctly?

A lab's OpenCL drivers fail in the field. The PoCL that ``pip install "pyopencl[pocl]"``
brings fails every build on a CPU newer than its LLVM (``unknown target CPU``); old AMD
drivers fail some kernels or compute wrong results. So before a device is used, it is
*probed*: a small ONNX model (Conv with padding and bias, Relu, MaxPool, Flatten, Gemm,
Add with broadcasting, Sigmoid, Softmax) is built for the device by the OpenCL executor
itself (the same kernels, build options and launch geometry that real models use), run on
seeded inputs, and compared with a numpy reference computed here. The verdict is
:class:`DeviceVerdict`: ``usable``, and when not, ``problem`` in one line (the build log's
first error, or which output was wrong by how much) with ``advice`` on what to install.

A driver may also crash or hang the process in the probe. While a probe runs, a marker with
its process id sits in the cache; a later start that finds the marker of a process that is
gone counts an unfinished probe, and after ``UNFINISHED_PROBES_ALLOWED`` of them the device
is unusable ("its probe did not finish") without probing it a third time.

A probe builds a dozen kernels (seconds with a cold compiler cache), so verdicts are cached
on disk (``$MESHGPU_CACHE_DIR``, else ``$XDG_CACHE_HOME/meshgpu``, else
``~/.cache/meshgpu``; file ``device-probes.json``), keyed by everything that can change the
answer: the probe's version, the platform and its version, the device, its driver and
OpenCL versions, the CPU model (home directories are often shared between lab machines)
and the environment variables that steer the OpenCL drivers (``POCL_*``, ``OCL_ICD_*``,
``PYOPENCL_*``). A second start on the same machine reads the verdict and builds nothing.
Within a process a verdict is computed once per device.

Rejected alternatives: probing in a child process (it would survive a driver that crashes
the process, but costs an interpreter start and a second OpenCL initialisation per device
on every cold start; with the marker, such a driver costs two starts, not every start); a
hand-written probe kernel (it would
test the driver's compiler on code the executor never runs, and miss exactly the
failures of kernels it does); comparing with onnxruntime (an independent numpy reference
keeps the probe's verdict from depending on a second engine).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshgpu.inference.devices import DeviceInfo, devices

logger = logging.getLogger("meshgpu.inference")

UNFINISHED_PROBES_ALLOWED = 2
"""A device whose probe left the process dead (or hung until killed) this many times is
unusable without a third try: a driver that crashes on the probe's kernels would crash
every start. Once could be a kill during a cold start's seconds of compiling."""

PROBE_VERSION = 1
"""Bumped whenever the probe model or its checks change: older cached verdicts are ignored."""

CACHE_FILE = "device-probes.json"

TOLERANCE = 1e-4
"""Relative tolerance of the comparison (as the conformance suite: ``1e-4·max(1, |ref|)``)."""

DRIVER_ENVIRONMENT = ("POCL_", "OCL_ICD_", "PYOPENCL_")
"""Prefixes of the environment variables that change what an OpenCL driver does."""

POCL_PLATFORM = "Portable Computing Language"

POCL_ADVICE = (
    "install the distribution's PoCL (Debian/Ubuntu: apt-get install pocl-opencl-icd) or a "
    "vendor OpenCL driver (docs/operations.md, OpenCL drivers)"
)
VENDOR_ADVICE = (
    "update or reinstall this device's OpenCL driver (docs/operations.md, OpenCL drivers)"
)


@dataclass(frozen=True)
class DeviceVerdict:
    """Whether ``device_id`` can be trusted, and why not.

    ``probe_ms`` is how long the probe that produced the verdict took (build, run and
    compare); ``cached`` says the verdict came from the on-disk cache (nothing was built
    in this process). onnxruntime's CPU is the reference and always usable.
    """

    device_id: str
    usable: bool
    problem: str | None
    advice: str | None
    probe_ms: float
    cached: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "usable": self.usable,
            "problem": self.problem,
            "advice": self.advice,
            "probe_ms": self.probe_ms,
            "probe_cached": self.cached,
        }


_lock = threading.Lock()
_verdicts: dict[str, DeviceVerdict] = {}
probes_built = 0
"""Probes this process actually built and ran (the cached ones cost nothing)."""


def cache_path() -> Path:
    """Where verdicts are kept (module docstring)."""
    base = os.environ.get("MESHGPU_CACHE_DIR")
    if base:
        return Path(base) / CACHE_FILE
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "meshgpu" / CACHE_FILE


def verdict(device: DeviceInfo) -> DeviceVerdict:
    """The verdict on ``device``: from this process's memory, the disk cache, or a probe.

    Blocking (a probe builds kernels): the daemon calls it before joining the mesh.
    """
    if device.backend != "opencl":
        return DeviceVerdict(device.id, True, None, None, 0.0, cached=True)
    with _lock:  # one probe per device at a time; the others wait for its verdict
        known = _verdicts.get(device.id)
        if known is not None:
            return known
        key = cache_key(device)
        found = _read_cache().get(key)
        if isinstance(found, dict) and isinstance(found.get("usable"), bool):
            known = DeviceVerdict(
                device.id,
                found["usable"],
                found.get("problem"),
                None if found["usable"] else _advice(device),
                float(found.get("probe_ms", 0.0)),
                cached=True,
            )
        else:
            label = f"{device.name} ({device.platform}, driver {device.driver_version})"
            unfinished = _unfinished_probes(found)
            if unfinished >= UNFINISHED_PROBES_ALLOWED:
                known = DeviceVerdict(
                    device.id,
                    False,
                    f"its probe did not finish {unfinished} times: the driver crashed or hung "
                    f"the process (delete {cache_path()} to probe again)",
                    _advice(device),
                    0.0,
                    cached=False,
                )
            else:
                _write_cache(
                    key, {"device": label, "probing_pid": os.getpid(), "unfinished": unfinished}
                )
                try:
                    known = _probe(device)
                except BaseException:  # Ctrl-C, SystemExit: an interruption, not a crash
                    _write_cache(key, None)
                    raise
            _write_cache(
                key,
                {
                    "device": label,
                    "usable": known.usable,
                    "problem": known.problem,
                    "probe_ms": known.probe_ms,
                    "probed_at": time.time(),
                },
            )
        _verdicts[device.id] = known
    if not known.usable:
        logger.info(
            "OpenCL device %s (%s) is not usable (backend 'auto' leaves it out): %s; %s",
            device.id,
            device.name,
            known.problem,
            known.advice,
        )
    return known


def _unfinished_probes(entry: object) -> int:
    """How many probes of this device started and never wrote a verdict, judged from the
    marker a probe leaves in the cache while it runs: a marker whose process is gone
    counts one more; one whose process still runs is a probe under way elsewhere (several
    daemons starting at once), not a failure."""
    if not isinstance(entry, dict) or not isinstance(entry.get("probing_pid"), int):
        return 0
    before = entry.get("unfinished", 0)
    before = before if isinstance(before, int) else 0
    try:
        os.kill(entry["probing_pid"], 0)
    except ProcessLookupError:
        return before + 1
    except OSError:  # alive, under another user
        pass
    return before


def verdicts() -> tuple[DeviceVerdict, ...]:
    """The verdict on every device of :func:`~meshgpu.inference.devices`, in that order."""
    return tuple(verdict(device) for device in devices())


def usable(device: DeviceInfo) -> bool:
    return verdict(device).usable


def forget() -> None:
    """Drop this process's verdicts (the disk cache stays): the next call probes or reads
    the cache again. For tests that change a device's behaviour in-process."""
    with _lock:
        _verdicts.clear()


def cache_key(device: DeviceInfo) -> str:
    """A digest of everything that can change the verdict on ``device`` (module doc)."""
    from meshgpu.inference.devices import _cpuinfo_field

    environment = sorted(
        (name, value) for name, value in os.environ.items() if name.startswith(DRIVER_ENVIRONMENT)
    )
    identity = [
        PROBE_VERSION,
        device.platform,
        _platform_version(device),
        device.name,
        device.vendor,
        device.driver_version,
        device.version,
        _cpuinfo_field("model name", ""),
        environment,
    ]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def _platform_version(device: DeviceInfo) -> str:
    try:
        import pyopencl as cl

        return str(cl.get_platforms()[device.platform_index].version).strip()
    except Exception:  # the device list was made from the same platforms: rarely reached
        return ""


# --- the probe ----------------------------------------------------------------------------


@functools.cache
def probe_case() -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """(the probe model, its feeds, the numpy reference of its output ``y``)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(20261206)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(4).astype(np.float32)
    gemm_w = rng.standard_normal((4 * 3 * 3, 5)).astype(np.float32)
    gemm_b = rng.standard_normal(5).astype(np.float32)
    shift = rng.standard_normal((1, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["gemm"]),
        helper.make_node("Add", ["gemm", "shift"], ["shifted"]),
        helper.make_node("Sigmoid", ["shifted"], ["gate"]),
        helper.make_node("Mul", ["gate", "gemm"], ["gated"]),
        helper.make_node("Softmax", ["gated"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "meshgpu-device-probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(gemm_w, "gemm_w"),
            numpy_helper.from_array(gemm_b, "gemm_b"),
            numpy_helper.from_array(shift, "shift"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    return model, {"x": x}, _reference(x, conv_w, conv_b, gemm_w, gemm_b, shift)


def _reference(
    x: np.ndarray,
    conv_w: np.ndarray,
    conv_b: np.ndarray,
    gemm_w: np.ndarray,
    gemm_b: np.ndarray,
    shift: np.ndarray,
) -> np.ndarray:
    """The probe model in float64 numpy (the ONNX operator definitions, opset 13)."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # [N, C, H, W, 3, 3]
    conv = np.einsum("nchwij,ocij->nohw", windows, conv_w.astype(np.float64))
    conv += conv_b[None, :, None, None]
    relu = np.maximum(conv, 0.0)
    n, c, h, w = relu.shape
    pool = relu.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    gemm = pool.reshape(n, -1) @ gemm_w.astype(np.float64) + gemm_b
    gate = 1.0 / (1.0 + np.exp(-(gemm + shift)))
    gated = gate * gemm
    exp = np.exp(gated - gated.max(axis=1, keepdims=True))
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def _probe(device: DeviceInfo) -> DeviceVerdict:
    """Build, run and check the probe model on ``device`` (never raises)."""
    global probes_built
    probes_built += 1
    # Said before the work: a first `meshgpu join` printed nothing for a minute and a
    # half (three daemons probing at once on two loaded cores) and looked hung.
    logger.info(
        "probing OpenCL device %s (%s): building its kernels, up to a minute or more on a "
        "first start (the verdict is cached in %s; later starts skip this)",
        device.id,
        device.name,
        cache_path(),
    )
    started = time.perf_counter()
    problem = _problem(device)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    if problem is None:
        logger.info(
            "OpenCL device %s (%s) passed its probe in %.0f ms", device.id, device.name, elapsed_ms
        )
        return DeviceVerdict(device.id, True, None, None, elapsed_ms, cached=False)
    return DeviceVerdict(device.id, False, problem, _advice(device), elapsed_ms, cached=False)


def _advice(device: DeviceInfo) -> str:
    """What to install when ``device`` fails its probe."""
    return POCL_ADVICE if device.platform == POCL_PLATFORM else VENDOR_ADVICE


def _problem(device: DeviceInfo) -> str | None:
    """None when the device computes the probe model correctly, else the cause in one line."""
    try:
        from meshgpu.inference.devices import opencl_device
        from meshgpu.inference.opencl import OpenCLSession

        model, feeds, expected = probe_case()
        session = OpenCLSession(model, device=opencl_device(device))
        outputs = session.run(dict(feeds))
    except Exception as error:  # a broken driver may raise anything: that is the verdict
        return describe_failure(error)
    got = np.asarray(outputs.get("y"))
    if got.shape != expected.shape:
        return f"wrong results: output 'y' has shape {got.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(got)):
        return "wrong results: output 'y' holds NaN or infinity where numpy has finite values"
    deviation = np.abs(got.astype(np.float64) - expected)
    allowed = TOLERANCE * np.maximum(1.0, np.abs(expected))
    if np.any(deviation > allowed):
        worst = np.unravel_index(int(np.argmax(deviation - allowed)), deviation.shape)
        return (
            f"wrong results: output 'y'{list(worst)} is {got[worst]:.6g} where numpy computes "
            f"{expected[worst]:.6g} (error {deviation[worst]:.3g}, allowed {allowed[worst]:.3g})"
        )
    return None


_ERROR_LINE = re.compile(r"\berror\b", re.IGNORECASE)


def describe_failure(error: BaseException) -> str:
    """The cause of ``error`` in one line: a build log's first error line, else the message's
    first line, prefixed with the error's kind."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    log_lines = lines[1:] if lines else []  # pyopencl puts the call and status first
    chosen = next((line for line in log_lines if _ERROR_LINE.search(line)), None)
    if chosen is None and "Build on" in text:
        after = text.split("Build on", 1)[1].splitlines()[1:]
        chosen = next((line.strip() for line in after if line.strip()), None)
    headline = lines[0] if lines else type(error).__name__
    if " - " in headline:  # "clBuildProgram failed: X - clBuildProgram failed: X - ..."
        headline = headline.split(" - ", 1)[0]
    summary = headline if chosen is None or chosen == headline else f"{headline}: {chosen}"
    return f"{type(error).__name__}: {summary}"[:300]


# --- the cache file ---------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    """An advisory lock beside ``path`` for read-modify-write (several daemons start at
    once on one machine); without fcntl, no lock (a lost entry only costs a re-probe)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cache() -> dict[str, Any]:
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("ignoring the device probe cache %s: %s", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict[str, Any] | None) -> None:
    """Set (or, with None, remove) one entry of the cache file, atomically; a failure only
    costs a re-probe."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            data = _read_cache()
            if entry is None:
                data.pop(key, None)
            else:
                data[key] = entry
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(temporary, path)
    except OSError as error:
        logger.warning("cannot save the device probe verdict in %s: %s", path, error)
