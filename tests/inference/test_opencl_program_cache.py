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


def test_launch_variants_are_measured_once_then_read_back(tmp_path, monkeypatch) -> None:
    """A product's work-item size is chosen by measuring its variants on the first plan;
    a second session (same device, kernel and shape) reads the choice from tuning.json."""
    import json

    from onnx import TensorProto, helper, numpy_helper

    from meshgpu.inference.opencl import OpenCLSession, tuning

    monkeypatch.setenv("MESHGPU_CACHE_DIR", str(tmp_path))
    tuning.reset_memory()
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((48, 200)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tuned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [40, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = rng.standard_normal((40, 48)).astype(np.float32)
    before = tuning.searches
    # inline=False: one device, one search (PoCL's in-thread twin would tune its own)
    first = OpenCLSession(model, inline=False).run({"x": x})["y"]
    assert tuning.searches == before + 1
    entries = json.loads((tmp_path / "tuning.json").read_text())
    (entry,) = entries.values()
    assert entry["value"] in (1, 2, 4, 8, 16, 25) and entry["search_ms"] >= 0
    assert len(entry["times_us"]) >= 4  # every variant was measured

    tuning.reset_memory()  # as a new process would: from the file
    second = OpenCLSession(model, inline=False).run({"x": x})["y"]
    assert tuning.searches == before + 1
    np.testing.assert_allclose(first, x @ weight, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(first, second)
    tuning.reset_memory()


def test_convolution_launch_shape_is_searched_once_and_kept(tmp_path, monkeypatch) -> None:
    """A stride-1 convolution's tile counts per work-item are measured like the product's
    (the rule's choice first), recorded with what the search cost, and read back by a
    second session."""
    import json

    from onnx import TensorProto, helper, numpy_helper

    from meshgpu.inference.opencl import OpenCLSession, tuning

    monkeypatch.setenv("MESHGPU_CACHE_DIR", str(tmp_path))
    tuning.reset_memory()
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((40, 24, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "tuned conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 24, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = rng.standard_normal((2, 24, 20, 20)).astype(np.float32)
    before = tuning.searches
    # inline=False: one device, one search (PoCL's in-thread twin would tune its own)
    first = OpenCLSession(model, inline=False).run({"x": x})["y"]
    assert tuning.searches == before + 1
    entries = json.loads((tmp_path / "tuning.json").read_text())
    (key,) = entries
    entry = entries[key]
    assert "conv_gemm6" in key and entry["search_ms"] >= 0
    assert len(entry["times_us"]) >= 3 and entry["value"] in entry["times_us"]
    tuning.reset_memory()
    second = OpenCLSession(model, inline=False).run({"x": x})["y"]
    assert tuning.searches == before + 1
    np.testing.assert_array_equal(first, second)
    tuning.reset_memory()


def test_the_rules_choice_stays_unless_clearly_beaten() -> None:
    from meshgpu.inference.opencl import tuning

    assert tuning.pick([100.0, 95.0, 120.0], prefer_first=True) == 0  # within the margin
    assert tuning.pick([100.0, 80.0, 85.0], prefer_first=True) == 1
    assert tuning.pick([100.0, 95.0, 120.0], prefer_first=False) == 1


def test_a_long_launch_keeps_every_compute_unit_busy() -> None:
    """On a busy machine one work-group can time as fast as two (the second core is taken
    anyway); for a launch long enough to split, it is not chosen on a multi-core device."""
    from meshgpu.inference.opencl import tuning

    times, groups = [900.0, 850.0, 880.0], [8, 1, 2]
    assert tuning.pick(times, prefer_first=False, groups=groups, compute_units=2) == 2
    assert tuning.pick(times, prefer_first=True, groups=groups, compute_units=2) == 0
    assert tuning.pick(times, prefer_first=False, groups=groups, compute_units=1) == 1
    # a short launch may stay in one work-group: waking a thread costs more than it saves
    assert tuning.pick([3.0, 2.0], prefer_first=False, groups=[4, 1], compute_units=2) == 1
    # nothing splits enough: the fastest of those with the most work-groups
    slow = [90.0, 80.0, 70.0]
    assert tuning.pick(slow, prefer_first=False, groups=[1, 1, 1], compute_units=2) == 2
    assert tuning.pick(slow, prefer_first=False, groups=[2, 2, 1], compute_units=4) == 1
    assert tuning.work_groups((7, 5, 1), (1, 1, 1)) == 35
    assert tuning.work_groups((4096,), (8,)) == 512
