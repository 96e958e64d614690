"""Constants on the device: uploads, the per-session weight cache and panel packing.

:class:`WeightUploads` is the part of the plan builder that puts constants on the device.
Weights are cached in the session's ``weights`` dict under a key naming what was derived
from which initializer, so a second plan (another input shape) uploads nothing again.
Panels for the GEMM kernels are packed on the device, queued without waiting, and waited
for once when the walk ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyopencl as cl

from meshgpu.errors import DeviceError
from meshgpu.inference.opencl import programs


class WeightUploads:
    """Uploading constants for a plan builder (mixed into :class:`.plan.PlanBuilder`)."""

    weights: dict[Any, cl.Buffer]
    dry: bool
    device: cl.Device
    context: cl.Context
    _queue: cl.CommandQueue | None
    _pack_kernel: cl.Kernel | None
    #: (source buffer, offsets buffer, source array) of packings queued but not waited on.
    _pending: list[tuple[cl.Buffer, cl.Buffer, np.ndarray]]

    def weight(self, key: Any, make: Callable[[], np.ndarray], dtype: Any = None) -> Any:
        """Device copy (a ``cl.Buffer``) of a derived constant, uploaded once per session
        under ``key``; None during a dry walk, which never touches the device."""
        buffer = self.weights.get(key)
        if buffer is None:
            if self.dry:
                return None
            array = make()
            if dtype is None:
                dtype = np.int32 if array.dtype == np.int32 else np.float32
            buffer = self._upload(np.ascontiguousarray(array, dtype=dtype))
            self.weights[key] = buffer
        return buffer

    def packed_weight(self, key: Any, make: Callable[[], np.ndarray], panel: int = 8) -> Any:
        """Panels ``[batch][ceil(rows/panel)][K][panel]`` of a constant ``[batch, rows, K]``
        matrix (``panel`` is 8, or 6 for ``conv_gemm6``),
        packed on the device (the transposing copy is several times faster there than in
        numpy, and it is most of a session's start-up); cached like :meth:`weight`.

        The packing is only queued: the source matrix is lent to the device without a copy
        (``USE_HOST_PTR``) and kept alive until :meth:`_finish` waits once for every packing,
        instead of one copy and one wait per weight."""
        buffer = self.weights.get(key)
        if buffer is not None or self.dry:
            return buffer
        from meshgpu.inference.opencl.kernels import CORE_SOURCE

        matrix = np.ascontiguousarray(make(), dtype=np.float32)
        batch, rows, depth = matrix.shape
        blocks = -(-rows // panel)
        total = batch * blocks * depth
        raw = self._lend(matrix)
        offsets = self._lend(np.arange(batch, dtype=np.int32) * rows * depth)
        try:
            buffer = cl.Buffer(self.context, cl.mem_flags.READ_WRITE, max(4, total * panel * 4))
        except cl.Error as error:
            raise DeviceError(
                f"could not allocate {total * panel * 4} bytes of weights: {error}"
            ) from error
        if self._pack_kernel is None:
            program = programs.program_for(self.device, CORE_SOURCE)
            self._pack_kernel = cl.Kernel(program, "pack_panels")
        kernel = self._pack_kernel
        arguments: list[Any] = [raw, buffer, offsets]
        arguments += [np.int32(v) for v in (rows, depth, depth, 1, blocks, total, panel)]
        for position, value in enumerate(arguments):
            kernel.set_arg(position, value)
        queue = self._setup_queue()
        cl.enqueue_nd_range_kernel(queue, kernel, (-(-total // 8) * 8,), (8,))
        self._pending.append((raw, offsets, matrix))
        self.weights[key] = buffer
        return buffer

    def _lend(self, array: np.ndarray) -> cl.Buffer:
        """A read-only buffer over ``array``'s own memory (the caller keeps it alive until
        the queue has finished with it)."""
        if array.nbytes == 0:
            return self._upload(array)
        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR
        try:
            return cl.Buffer(self.context, flags, hostbuf=array)
        except cl.Error as error:
            raise DeviceError(
                f"could not allocate {array.nbytes} bytes of constants on {self.device.name}: "
                f"{error}"
            ) from error

    def _wait_for_packing(self) -> None:
        """Wait for every queued packing, then drop the lent source matrices."""
        if self._queue is not None and self._pending:
            self._queue.finish()
        for raw, offsets, _ in self._pending:
            raw.release()
            offsets.release()
        self._pending.clear()

    def _setup_queue(self) -> cl.CommandQueue:
        if self._queue is None:
            self._queue = cl.CommandQueue(self.context)
        return self._queue

    def _upload(self, array: np.ndarray) -> cl.Buffer:
        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        if array.nbytes == 0:
            array = np.zeros(1, dtype=np.float32)
        try:
            return cl.Buffer(self.context, flags, hostbuf=array)
        except cl.Error as error:
            raise DeviceError(
                f"could not allocate {array.nbytes} bytes of constants on {self.device.name}: "
                f"{error}"
            ) from error
