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
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("meshgpu.daemon")


def preload_inference(backend: str) -> float:
    """Import what ``backend`` will need and warm onnxruntime; returns the seconds spent.

    A missing optional stack is only logged: the first task reports the real error with
    its own reason, as before.
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
