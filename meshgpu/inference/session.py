"""``load``: choose a backend and a device for a model, and the session it returns.

The choice is explicit and explained: ``backend="auto"`` takes OpenCL when the OpenCL
executor supports every operator of the model and the model fits the device, otherwise
onnxruntime, and the session's ``backend_reason`` says which and why (it is logged too).
``backend="opencl"`` never silently becomes onnxruntime: an unsupported operator is an
:class:`UnsupportedOperatorError` naming the op, its opset and the node, unless the caller
passed ``allow_fallback=True``.

Devices are probed, not trusted (:mod:`meshgpu.inference.probe`): ``auto`` picks usable
devices only, and ``backend="opencl"`` on a device that failed its probe is a
:class:`DeviceError` naming the problem. A model whose kernels fail to build or run on a
usable device falls back to onnxruntime where fallback is allowed (``auto``, or
``allow_fallback=True``): the reason is logged once, and the (device, model) pair is
remembered as failing, so later loads of that model in this process go straight to
onnxruntime instead of rebuilding what failed.

All checks that can fail on the caller's input (model file, feeds, memory estimate) run here
or in :mod:`meshgpu.inference.model` before any device work.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal, Protocol

import numpy as np
import onnx

from meshgpu.errors import (
    DeviceError,
    InferenceError,
    MeshError,
    PermanentTaskError,
    UnsupportedOperatorError,
)
from meshgpu.inference.devices import (
    DeviceInfo,
    default_device,
    opencl_device,
    select_device,
)
from meshgpu.inference.model import (
    InputSpec,
    LoadedModel,
    initializer_bytes,
    largest_tensor,
    load_model,
    validate_feeds,
)

logger = logging.getLogger("meshgpu.inference")

BackendChoice = Literal["opencl", "onnxruntime", "auto"]


class BackendSession(Protocol):
    """What each backend's session offers (OpenCLSession and OnnxRuntimeSession)."""

    inputs: Any
    outputs: list[str]
    peak_device_bytes: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


#: Feed signatures a session remembers as valid (a bound: batch sizes may vary freely).
_ACCEPTED_SIGNATURES = 64


def _signature(
    feeds: Mapping[str, np.ndarray],
) -> tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...] | None:
    """(name, shape, dtype) of every feed, or None when ``feeds`` is not all numpy arrays."""
    if not isinstance(feeds, Mapping):
        return None
    signature = []
    for name, array in feeds.items():
        if not isinstance(array, np.ndarray):
            return None
        signature.append((name, array.shape, array.dtype))
    return tuple(signature)


class Session:
    """A model ready to run on one backend and device.

    ``inputs`` maps each feed name to (shape, numpy dtype), with ``str`` for a symbolic
    dimension and ``None`` for an unknown one; ``outputs`` lists the output names. ``run``
    validates the feeds (raising :class:`InputError` before any device work), then runs.
    """

    def __init__(
        self,
        implementation: BackendSession,
        model: LoadedModel,
        backend: Literal["opencl", "onnxruntime"],
        device: DeviceInfo,
        reason: str,
        fallback: str | None = None,
    ) -> None:
        self._implementation = implementation
        self.model = model
        self.backend = backend
        self.device = device
        self.backend_reason = reason
        self._fallback = fallback
        """Why an OpenCL failure at run time may switch this session to onnxruntime
        (``"backend='auto'"``, ``"allow_fallback=True"``), or None: the error is raised."""
        self._switch_lock = threading.Lock()
        self.inputs: InputSpec = model.inputs
        self._defaulted = model.defaulted_inputs
        self.outputs: list[str] = model.outputs
        self.last_run_seconds = 0.0
        self._accepted: set[tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...]] = set()

    @property
    def digest(self) -> str:
        """The sha256 of the model's bytes (its content address in the mesh)."""
        return self.model.digest

    @property
    def peak_device_bytes(self) -> int:
        """The most device memory the backend has held for this model (see each backend)."""
        return int(self._implementation.peak_device_bytes)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate ``feeds`` and run the model; returns every output by name.

        Validation depends only on each feed's name, shape and dtype, so a signature that
        passed once is remembered and later calls with it skip the checks (on the digits
        model they cost about as much as onnxruntime's whole inference).
        """
        signature = _signature(feeds)
        if signature is not None and signature in self._accepted:
            checked = {
                name: array if array.flags.c_contiguous else np.ascontiguousarray(array)
                for name, array in feeds.items()
            }
        else:
            checked = validate_feeds(self.inputs, feeds, self._defaulted)
            feed_bytes = sum(array.nbytes for array in checked.values())
            if feed_bytes > self.device.global_memory_bytes:
                raise DeviceError(
                    f"the feeds take {feed_bytes} bytes but {self.device.id} "
                    f"({self.device.name}) has {self.device.global_memory_bytes} bytes of "
                    "memory; send smaller batches"
                )
            if signature is not None and len(self._accepted) < _ACCEPTED_SIGNATURES:
                self._accepted.add(signature)
        started = time.perf_counter()
        implementation = self._implementation
        try:
            results = implementation.run(checked)
        except PermanentTaskError:
            raise
        except Exception as error:
            if self.backend != "opencl":
                raise
            if self._fallback is None:
                if isinstance(error, MeshError):
                    raise
                from meshgpu.inference.probe import describe_failure

                raise DeviceError(
                    f"OpenCL on {self.device.id} ({self.device.name}) failed running this "
                    f"model: {describe_failure(error)}; use allow_fallback=True or "
                    "backend='onnxruntime'"
                ) from error
            self._fall_back(implementation, error)
            started = time.perf_counter()
            results = self._implementation.run(checked)
        self.last_run_seconds = time.perf_counter() - started
        return {name: results[name] for name in self.outputs}

    def _fall_back(self, failed: BackendSession, error: Exception) -> None:
        """The OpenCL run failed (a kernel that did not build for these shapes, a device
        error): continue on onnxruntime, remember the pair, log the reason once."""
        from meshgpu.inference.onnxruntime_backend import OnnxRuntimeSession
        from meshgpu.inference.probe import describe_failure

        with self._switch_lock:
            if self._implementation is not failed:
                return  # another thread switched already
            cause = (
                f"OpenCL on {self.device.id} ({self.device.name}) failed running this model: "
                f"{describe_failure(error)}"
            )
            mark_failing(self.device, self.digest, cause, self.model.source)
            implementation = OnnxRuntimeSession(self.model.proto)
            self.device = select_device("onnxruntime:cpu")
            self.backend = "onnxruntime"
            self.backend_reason = f"{cause}; fell back ({self._fallback})"
            self._implementation = implementation

    def __repr__(self) -> str:
        return (
            f"<Session {self.model.source} sha256={self.digest[:12]} "
            f"backend={self.backend} device={self.device.id}>"
        )


def check_fits(model: LoadedModel, device: DeviceInfo) -> None:
    """Raise :class:`DeviceError` if the model cannot fit the device's memory at all.

    A lower bound, computed without touching the device: the weights plus the largest
    tensor at batch 1 must fit in global memory, and no single tensor may exceed the
    device's largest allocation.
    """
    weights = initializer_bytes(model.proto)
    tensor_name, tensor_bytes = largest_tensor(model.proto)
    biggest_single = max(tensor_bytes, _largest_initializer(model.proto))
    needed = weights + tensor_bytes
    if needed > device.global_memory_bytes:
        raise DeviceError(
            f"model {model.source} needs at least {needed} bytes ({weights} of weights, "
            f"{tensor_bytes} for tensor {tensor_name!r}) but {device.id} ({device.name}) has "
            f"{device.global_memory_bytes} bytes of memory; use a device with more memory"
        )
    if biggest_single > device.max_allocation_bytes:
        raise DeviceError(
            f"model {model.source} has a tensor of {biggest_single} bytes but {device.id} "
            f"({device.name}) allocates at most {device.max_allocation_bytes} bytes at once"
        )


def _largest_initializer(proto: onnx.ModelProto) -> int:
    sizes = [
        math.prod(tensor.dims)
        * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        for tensor in proto.graph.initializer
    ]
    return max(sizes, default=0)


_failing: dict[tuple[str, str], str] = {}
"""(OpenCL device id, model digest) -> why that model failed there (module docstring)."""
_failing_lock = threading.Lock()


def mark_failing(device: DeviceInfo, digest: str, cause: str, source: str) -> None:
    """Remember that model ``digest`` fails on ``device`` because of ``cause``; logged
    once per pair."""
    with _failing_lock:
        if (device.id, digest) in _failing:
            return
        _failing[(device.id, digest)] = cause
    logger.warning("model %s: %s; it runs on onnxruntime where fallback is allowed", source, cause)


def failing_models() -> dict[tuple[str, str], str]:
    """Every (OpenCL device id, model digest) whose kernels failed in this process, with
    the reason: those models run on onnxruntime where fallback is allowed."""
    with _failing_lock:
        return dict(_failing)


def _opencl_module() -> tuple[Any, str]:
    """The OpenCL executor package, or (None, why it cannot be imported here)."""
    try:
        import meshgpu.inference.opencl as opencl
    except ImportError as error:
        logger.warning("OpenCL executor unavailable: %s", error)
        return None, f"the OpenCL executor cannot be imported ({error})"
    return opencl, ""


def _describe_unsupported(unsupported: list[tuple[str, int, str]]) -> str:
    return ", ".join(
        f"{op_type} (opset {opset}, node {node_name!r})"
        for op_type, opset, node_name in unsupported
    )


def _onnxruntime_session(model: LoadedModel, reason: str) -> Session:
    from meshgpu.inference.onnxruntime_backend import OnnxRuntimeSession

    device = select_device("onnxruntime:cpu")
    check_fits(model, device)
    implementation = OnnxRuntimeSession(model.proto)
    logger.info("model %s runs on onnxruntime: %s", model.source, reason)
    return Session(implementation, model, "onnxruntime", device, reason)


def _opencl_session(
    model: LoadedModel, device: DeviceInfo | None, allow_fallback: bool, auto: bool
) -> Session:
    """Build an OpenCL session, or fall back (when allowed) with the reason said."""
    opencl, reason = _opencl_module()
    fallback = auto or allow_fallback
    why_fallback = "backend='auto'" if auto else "allow_fallback=True"
    if opencl is None:
        if fallback:
            return _onnxruntime_session(model, f"{reason}; fell back ({why_fallback})")
        raise DeviceError(reason + "; use backend='onnxruntime'")
    try:
        info = device if device is not None else default_device("opencl")
    except DeviceError as error:
        if fallback:
            return _onnxruntime_session(model, f"{error}; fell back ({why_fallback})")
        raise
    from meshgpu.inference.probe import verdict

    judged = verdict(info)
    if not judged.usable:
        reason = (
            f"OpenCL device {info.id} ({info.name}) failed its probe: {judged.problem}; "
            f"{judged.advice}"
        )
        if fallback:
            return _onnxruntime_session(model, f"{reason}; fell back ({why_fallback})")
        raise DeviceError(reason + "; or use backend='auto' or 'onnxruntime'")
    unsupported = list(opencl.unsupported_operators(model.proto))
    if unsupported:
        reason = "the OpenCL executor does not support " + _describe_unsupported(unsupported)
        if fallback:
            return _onnxruntime_session(model, f"{reason}; fell back ({why_fallback})")
        raise UnsupportedOperatorError(
            reason + "; load with backend='onnxruntime' or allow_fallback=True"
        )
    known_failure = failing_models().get((info.id, model.digest))
    if known_failure is not None:
        if fallback:
            return _onnxruntime_session(model, f"{known_failure}; fell back ({why_fallback})")
        raise DeviceError(known_failure + "; use allow_fallback=True or backend='onnxruntime'")
    try:
        check_fits(model, info)
        implementation = opencl.OpenCLSession(model.proto, device=opencl_device(info))
    except (UnsupportedOperatorError, DeviceError) as error:
        if fallback:
            return _onnxruntime_session(model, f"OpenCL on {info.id}: {error}; fell back")
        raise
    except PermanentTaskError:
        raise
    except Exception as error:  # the driver failed building this model's kernels
        from meshgpu.inference.probe import describe_failure

        cause = (
            f"OpenCL on {info.id} ({info.name}) could not build this model: "
            f"{describe_failure(error)}"
        )
        if not fallback:
            raise DeviceError(
                cause + "; use allow_fallback=True or backend='onnxruntime'"
            ) from error
        mark_failing(info, model.digest, cause, model.source)
        return _onnxruntime_session(model, f"{cause}; fell back ({why_fallback})")
    reason = (
        f"every operator is supported by the OpenCL executor on {info.id} ({info.name})"
        if auto
        else f"backend='opencl' requested; running on {info.id} ({info.name})"
    )
    logger.info("model %s runs on OpenCL: %s", model.source, reason)
    return Session(
        implementation, model, "opencl", info, reason, fallback=why_fallback if fallback else None
    )


def load(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto,
    backend: BackendChoice = "auto",
    device: str | DeviceInfo | None = None,
    allow_fallback: bool = False,
) -> Session:
    """Load ``model`` (a path, the word ``"digits"``, bytes or a ModelProto) for inference.

    ``backend``: ``"opencl"``, ``"onnxruntime"`` or ``"auto"`` (OpenCL when it can run
    every operator, else onnxruntime). ``device``: an id from :func:`devices` such as
    ``"opencl:0"`` or ``"onnxruntime:cpu"``; a device implies its backend. With
    ``allow_fallback``, an explicit ``backend="opencl"`` that cannot run the model runs on
    onnxruntime instead, and ``Session.backend_reason`` says so.

    Raises :class:`ModelError` (bad file), :class:`UnsupportedOperatorError` (op, opset and
    node named), :class:`DeviceError` (no such device, model too large for it).
    """
    if backend not in ("opencl", "onnxruntime", "auto"):
        raise InferenceError(
            f"unknown backend {backend!r}: choose 'opencl', 'onnxruntime' or 'auto'"
        )
    loaded = load_model(model)
    chosen = select_device(device) if device is not None else None
    if chosen is not None and chosen.backend == "onnxruntime":
        if backend == "opencl":
            raise DeviceError(
                f"device {chosen.id} belongs to onnxruntime, not OpenCL; "
                "pick an 'opencl:<n>' device or backend='onnxruntime'"
            )
        return _onnxruntime_session(loaded, f"device {chosen.id} requested")
    if chosen is not None and backend == "onnxruntime":
        raise DeviceError(
            f"device {chosen.id} is an OpenCL device; backend='onnxruntime' runs on "
            "onnxruntime:cpu only"
        )
    if backend == "onnxruntime":
        return _onnxruntime_session(loaded, "backend='onnxruntime' requested")
    return _opencl_session(loaded, chosen, allow_fallback, auto=backend == "auto")
