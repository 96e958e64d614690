"""The on-disk program binary cache (opencl/programs.py): a second build of the same source
comes from the saved binary, and a damaged binary is rebuilt from source, not an error."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyopencl")

SOURCE = "__kernel void twice(__global float* a) { a[get_global_id(0)] *= 2.0f; }"


def _run(program, device) -> np.ndarray:
    import pyopencl as cl

    from meshgpu.inference.opencl import programs

    context = programs.context_for(device)
    queue = cl.CommandQueue(context)
    host = np.arange(4, dtype=np.float32)
    flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
    buffer = cl.Buffer(context, flags, hostbuf=host)
    kernel = cl.Kernel(program, "twice")
    kernel.set_arg(0, buffer)
    cl.enqueue_nd_range_kernel(queue, kernel, (4,), None)
    cl.enqueue_copy(queue, host, buffer, is_blocking=True)
    return host


def test_binaries_are_saved_reused_and_replaced_when_damaged(tmp_path, monkeypatch) -> None:
    from meshgpu.inference.opencl import programs

    monkeypatch.setenv("MESHGPU_CACHE_DIR", str(tmp_path))
    device = programs.default_device()
    options = list(programs.BUILD_OPTIONS)
    path = tmp_path / "kernels" / f"{programs._binary_key(device, SOURCE, options)}.bin"
    assert not path.exists()
    first = programs._build(device, SOURCE, options)
    assert path.stat().st_size > 0
    np.testing.assert_array_equal(_run(first, device), [0, 2, 4, 6])

    calls = []
    original = programs.cl.Program

    def counting(*args, **kwargs):
        calls.append("binary" if len(args) == 3 else "source")
        return original(*args, **kwargs)

    monkeypatch.setattr(programs.cl, "Program", counting)
    again = programs._build(device, SOURCE, options)
    assert calls == ["binary"]
    np.testing.assert_array_equal(_run(again, device), [0, 2, 4, 6])

    path.write_bytes(b"not a binary")
    calls.clear()
    rebuilt = programs._build(device, SOURCE, options)
    assert calls == ["binary", "source"]
    np.testing.assert_array_equal(_run(rebuilt, device), [0, 2, 4, 6])
    assert path.read_bytes() != b"not a binary"
