"""Pay the inference stack's import cost at start, before the node joins the mesh.

Importing onnxruntime (and pyopencl for the OpenCL backend) and creating onnxruntime's
first session take a second or more of mostly GIL-holding work. Done lazily, inside the
worker thread of a node's first task, it starved the trio loop (same GIL) long enough for
peers to miss its acks and declare a live node dead with ``suspicion timeout (0
confirmations)``. Here it runs once, synchronously, before the node exists: nobody is
waiting for this node's answers yet.

Rejected: importing in a worker thread after joining (the GIL is still shared, the loop
still stalls), and importing at module level in the daemon (``meshgpu --help`` and the
client would pay it too).

The OpenCL devices are probed here too (``meshgpu.inference.probe``: build and run a small
model, compare with numpy), for the same reason: a cold probe builds kernels for seconds.
The verdicts are cached on disk, so a second start builds nothing. A daemon told to use
``--backend opencl`` on a device that failed its probe refuses to start, naming the
problem; under ``auto`` unusable devices are only logged and left out.
"""

from __future__ import annotations

import logging
import time

from meshgpu.errors import DeviceError

logger = logging.getLogger("meshgpu.daemon")


def preload_inference(backend: str, device: str | None = None) -> float:
    """Import what ``backend`` will need, warm onnxruntime and probe the OpenCL devices;
    returns the seconds spent.

    A missing optional stack is only logged: the first task reports the real error with
    its own reason, as before. Raises :class:`DeviceError` when ``backend`` is
    ``"opencl"`` and the device it would use failed its probe.
    """
    started = time.perf_counter()
    import meshgpu.inference  # onnx, numpy and the session machinery

    if backend in ("onnxruntime", "auto"):
        _warm_onnxruntime()
    if backend in ("opencl", "auto"):
        try:
            import pyopencl  # noqa: F401

            import meshgpu.inference.opencl.executor  # noqa: F401
        except Exception as error:  # no OpenCL stack here: tasks say so when they run
            logger.info("OpenCL not preloaded (%s)", error)
        else:
            probe_devices(backend, device)
    spent = time.perf_counter() - started
    logger.info("inference stack (%s) loaded in %.2f s, before joining", backend, spent)
    return spent


def _warm_onnxruntime() -> None:
    """Import onnxruntime and build one tiny session (an Identity graph): the first
    session initialises onnxruntime's environment and thread pools."""
    try:
        import onnx
        import onnxruntime
        from onnx import TensorProto, helper

        value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "warm", [value], [result]
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = min(model.ir_version, 8)
        onnx.checker.check_model(model)
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime missing or broken: the first task says so
        logger.warning("onnxruntime not preloaded (%s)", error)


def probe_devices(backend: str, device: str | None) -> None:
    """Judge every OpenCL device (or only ``device``), log each verdict, and refuse an
    explicit ``--backend opencl`` that has no usable device to run on."""
    from meshgpu import inference
    from meshgpu.daemon.synthetic import is_synthetic
    from meshgpu.inference import probe

    if is_synthetic(device):
        return
    started = time.perf_counter()
    built_before = probe.probes_built
    candidates = [d for d in inference.devices() if d.backend == "opencl"]
    if device is not None:
        chosen = inference.select_device(device)
        candidates = [d for d in candidates if d.id == chosen.id]
    usable = []
    for candidate in candidates:
        verdict = probe.verdict(candidate)
        if verdict.usable:
            usable.append(candidate)
            logger.info("OpenCL device %s (%s) is usable", candidate.id, candidate.name)
        else:
            logger.warning(
                "OpenCL device %s (%s) is not usable (models run on onnxruntime instead): %s; %s",
                candidate.id,
                candidate.name,
                verdict.problem,
                verdict.advice,
            )
    logger.info(
        "device probes: %d built, %d cached, %.0f ms",
        probe.probes_built - built_before,
        len(candidates) - (probe.probes_built - built_before),
        (time.perf_counter() - started) * 1000,
    )
    if backend == "opencl" and not usable:
        if not candidates:
            raise DeviceError("--backend opencl: no OpenCL device found; use --backend auto")
        problems = "; ".join(f"{d.id} ({d.name}): {probe.verdict(d).problem}" for d in candidates)
        raise DeviceError(
            f"--backend opencl: no usable OpenCL device ({problems}); "
            f"{probe.verdict(candidates[0]).advice}, or use --backend auto"
        )
