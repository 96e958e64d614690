"""Bad input is a clear error naming the culprit, raised before any device work.

"Before device work" is checked by replacing the backend's run (or the OpenCL session
constructor) with a trap that fails the test if it is reached.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from meshgpu import inference
from meshgpu.errors import (
    DeviceError,
    InferenceError,
    InputError,
    ModelError,
    UnsupportedOperatorError,
)
from meshgpu.inference import opencl
from meshgpu.inference.model import SHIPPED_MODELS
from meshgpu.inference.session import check_fits

from .tiny_models import (
    huge_model,
    runtime_reshape_failure_model,
    two_input_model,
    unsupported_op_model,
)

DIGITS = SHIPPED_MODELS["digits"]
BACKENDS = ["opencl", "onnxruntime"]


def _trap(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("device work started although the input was invalid")


@pytest.fixture(params=BACKENDS)
def trapped_digits(request: pytest.FixtureRequest) -> inference.Session:
    session = inference.load("digits", backend=request.param)
    session._implementation.run = _trap  # type: ignore[method-assign]
    return session


@pytest.mark.parametrize(
    ("feeds", "fragments"),
    [
        ({}, ["missing input 'pixels'", "float32 [N, 64]"]),
        ({"pixel": np.zeros((1, 64), np.float32)}, ["unknown input", "'pixel'", "pixels"]),
        ({"pixels": np.zeros((2, 64), np.float64)}, ["'pixels'", "float64", "float32"]),
        ({"pixels": np.zeros((2, 63), np.float32)}, ["'pixels'", "axis 1", "expected 64", "63"]),
        ({"pixels": np.zeros((64,), np.float32)}, ["'pixels'", "rank 1", "expected 2"]),
        ({"pixels": [[0.0] * 64]}, ["'pixels'", "numpy array", "list"]),
    ],
    ids=["missing", "unknown-name", "dtype", "size", "rank", "not-an-array"],
)
def test_bad_feeds_name_the_input(
    trapped_digits: inference.Session, feeds: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(InputError) as raised:
        trapped_digits.run(feeds)
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_feed_for_an_input_with_a_default_says_what_the_input_is(backend: str) -> None:
    """An initializer listed among the graph inputs (a default value, which onnxruntime
    lets a feed override) was an "unknown input" of a model that lists it as an input."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "bias"], ["y"])],
        "defaulted",
        [
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3]),
            onnx.helper.make_tensor_value_info("bias", onnx.TensorProto.FLOAT, [3]),
        ],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        initializer=[onnx.numpy_helper.from_array(np.ones(3, np.float32), "bias")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    session = inference.load(model.SerializeToString(), backend=backend)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)
    with pytest.raises(InputError, match="'bias' have a default value in this model"):
        session.run({"x": x, "bias": np.zeros(3, np.float32)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_symbolic_dimension_must_agree(backend: str) -> None:
    session = inference.load(two_input_model(), backend=backend)  # type: ignore[arg-type]
    session._implementation.run = _trap  # type: ignore[method-assign]
    with pytest.raises(InputError, match=r"'b' has N=4 .* input 'a' has N=5"):
        session.run({"a": np.zeros((5, 3), np.float32), "b": np.zeros((4, 3), np.float32)})


def _corruptions() -> list[tuple[str, bytes]]:
    data = DIGITS.read_bytes()
    rng = np.random.default_rng(7)
    flipped = bytearray(data)
    flipped[10:400] = rng.integers(0, 256, 390, dtype=np.uint8).tobytes()
    cases = [("empty", b""), ("text", b"this is not an onnx model\n"), ("flipped", bytes(flipped))]
    for fraction in (0.05, 0.3, 0.5, 0.9, 0.999):
        cases.append((f"truncated-{fraction}", data[: int(len(data) * fraction)]))
    return cases


@pytest.mark.parametrize(
    ("label", "content"), _corruptions(), ids=[label for label, _ in _corruptions()]
)
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_corrupt_or_truncated_file_names_the_file(
    tmp_path: Path, label: str, content: bytes, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opencl, "OpenCLSession", _trap)
    path = tmp_path / f"{label}.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as raised:
        inference.load(path, backend=backend)  # type: ignore[arg-type]
    assert str(path) in str(raised.value)


def test_onnxruntimes_refusal_is_one_line_without_its_cpp_signature() -> None:
    # An opset newer than any release: onnxruntime's message carried its status code, a
    # source line and a 200-character C++ signature, over several lines.
    model = two_input_model()
    model.opset_import[0].version = 99
    with pytest.raises(ModelError) as raised:
        inference.load(model, backend="onnxruntime")
    message = str(raised.value)
    assert "Opset 99" in message
    assert "\n" not in message and "onnxruntime_src" not in message
    assert "std::" not in message and "[ONNXRuntimeError]" not in message


def test_a_kernel_refusing_the_computed_values_is_a_model_error() -> None:
    # Deterministic: the same feeds fail on every node, so the task must fail for good
    # (HTTP 400), as on the OpenCL executor, not be retried four times (HTTP 500).
    session = inference.load(runtime_reshape_failure_model(), backend="onnxruntime")
    with pytest.raises(ModelError, match="Reshape node") as raised:
        session.run({"x": np.array([[1, 0, 3, 0]], np.float32)})
    assert "onnxruntime_src" not in str(raised.value)


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        inference.load(tmp_path / "absent.onnx")
    # a bare word may be a catalog name (`meshgpu run mymodel`): say where those run
    with pytest.raises(ModelError, match="shipped models: digits; a catalog name"):
        inference.load("no-such-catalog-name")
    with pytest.raises(ModelError, match=r"absent\.onnx does not exist$"):
        inference.load(tmp_path / "absent.onnx")


def test_unsupported_operator_names_op_opset_and_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opencl, "OpenCLSession", _trap)
    with pytest.raises(UnsupportedOperatorError) as raised:
        inference.load(unsupported_op_model(), backend="opencl")
    assert "Det (opset 13, node 'determinant')" in str(raised.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_larger_than_the_device(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opencl, "OpenCLSession", _trap)
    device = inference.select_device(backend)
    side = int(np.sqrt(device.global_memory_bytes / 4)) + 1024  # one tensor beyond memory
    with pytest.raises(DeviceError) as raised:
        inference.load(huge_model(side), backend=backend)  # type: ignore[arg-type]
    message = str(raised.value)
    assert f"{side * side * 4}" in message and str(device.global_memory_bytes) in message
    assert "'big'" in message


def test_weights_beyond_a_small_device() -> None:
    model = inference.load_model(DIGITS)
    small = dataclasses.replace(
        inference.select_device("opencl"), global_memory_bytes=16_384, max_allocation_bytes=8192
    )
    with pytest.raises(DeviceError, match="16384 bytes of memory"):
        check_fits(model, small)
    roomy = dataclasses.replace(small, global_memory_bytes=1 << 30)
    with pytest.raises(DeviceError, match="allocates at most 8192 bytes"):
        check_fits(model, roomy)


_SIGNATURE = "/onnxruntime_src/onnxruntime/core/x.cc:1 void f(int) "


@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        # The model's (or its feeds') fault: every node fails the same way, for good.
        ("1 : FAIL : Non-zero status code returned while running Reshape node. Name:'r' "
         "Status Message: The input tensor cannot be reshaped to the requested shape.",
         ModelError),
        ("6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Gather node. "
         "Name:'g' Status Message: indices element out of data bounds, idx=9", ModelError),
        ("1 : FAIL : Non-zero status code returned while running Expand node. Name:'e' "
         "Status Message: /onnxruntime_src/onnxruntime/core/framework/tensor.cc:57 "
         "onnxruntime::Tensor::Tensor(onnxruntime::MLDataType, const onnxruntime::"
         "TensorShape&, std::shared_ptr<onnxruntime::IAllocator>) shape_size >= 0 was "
         "false. shape:{-1}", ModelError),  # an allocator in the signature only
        # The node's: its memory, its threads, its execution provider. Another node may
        # run the same task: retried there.
        ("1 : FAIL : Non-zero status code returned while running Expand node. Name:'' "
         f"Status Message: {_SIGNATURE}Failed to allocate memory for requested buffer",
         DeviceError),
        ("6 : RUNTIME_EXCEPTION : Non-zero status code returned while running MatMul node. "
         "Name:'m' Status Message: std::bad_alloc", DeviceError),
        ("11 : EP_FAIL : Non-zero status code returned while running Conv node. Name:'c' "
         "Status Message: CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR", DeviceError),
        ("1 : FAIL : Non-zero status code returned while running Conv node. Name:'c' "
         "Status Message: CUDA error cudaErrorLaunchFailure:unspecified launch failure",
         DeviceError),
        ("6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Add node. "
         "Name:'a' Status Message: pthread_create failed: Resource temporarily unavailable",
         DeviceError),
        # onnxruntime's own failure outside any node: retried.
        ("1 : FAIL : the session's run failed", InferenceError),
    ],
)  # fmt: skip
def test_an_onnxruntime_run_failure_is_the_models_or_the_nodes(
    raised: str, kind: type[Exception]
) -> None:
    """A failure while running a node is the model's (ModelError: the task fails with the
    reason) unless it says the node ran short of memory or threads or its execution
    provider failed (DeviceError: the task is tried on another node); a failure outside
    any node is onnxruntime's (InferenceError, retried)."""
    from meshgpu.inference.onnxruntime_backend import OnnxRuntimeSession

    class Failing:
        def run(self, names: Any, feeds: Any) -> Any:
            raise RuntimeError(f"[ONNXRuntimeError] : {raised}")

    session = OnnxRuntimeSession(two_input_model())
    session._session = Failing()
    feeds = {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 3), np.float32)}
    with pytest.raises(InferenceError) as caught:
        session.run(feeds)
    assert type(caught.value) is kind
    assert "[ONNXRuntimeError]" not in str(caught.value)
