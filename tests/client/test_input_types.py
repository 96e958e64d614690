"""A Python list fed to a model input of another dtype is refused by the client, before
anything is sent, with what to pass instead; the declared dtypes are the engine's reading
of the model's feeds, read once per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from meshgpu.client import Client, input_types
from meshgpu.client.batches import checked_arrays
from meshgpu.client.models import SHIPPED, ModelBlob
from meshgpu.errors import ConfigError
from meshgpu.inference.model import graph_inputs
from tests.client import test_session as fakes
from tests.client.test_sync_client import fake_peer  # noqa: F401 (a fixture)
from tests.typed_models import bfloat16_model, string_model

DIGITS = ModelBlob.of(SHIPPED["digits"])


def ir3_model() -> bytes:
    """Inputs ``x`` (float64) and ``count`` (int32), and a weight ``w`` listed among the
    inputs as IR 3 exporters do."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "ir3",
        [
            helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2]),
            helper.make_tensor_value_info("w", TensorProto.DOUBLE, [2]),
            helper.make_tensor_value_info("count", TensorProto.INT32, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])],
        [helper.make_tensor("w", TensorProto.DOUBLE, [2], [1.0, 2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    data: bytes = model.SerializeToString()
    return data


@pytest.mark.parametrize("make", ["digits", "ir3", "strings", "bfloat16"])
def test_the_declared_types_are_the_engines_numeric_feeds(tmp_path: Path, make: str) -> None:
    if make == "digits":
        data = DIGITS.data
    elif make == "ir3":
        data = ir3_model()
    else:
        build = string_model if make == "strings" else bfloat16_model
        data = build(tmp_path / "model.onnx").read_bytes()
    wanted = {
        name: dtype
        for name, (_, dtype) in graph_inputs(onnx.load_from_string(data)).items()
        if dtype in input_types.NUMERIC_DTYPES
    }
    assert input_types.declared_input_dtypes(data, f"test-{make}") == wanted
    assert input_types.declared_input_dtypes(b"not onnx at all", "test-junk") == {}


def test_a_list_of_another_dtype_is_refused_with_what_to_pass() -> None:
    pixels = [[0.0] * 64]
    with pytest.raises(ConfigError) as refused:
        checked_arrays({"pixels": pixels}, DIGITS)
    message = str(refused.value)
    assert "'pixels'" in message and "float64" in message and "float32" in message
    assert "numpy.asarray(value, dtype='float32')" in message
    # arrays and numpy scalars carry the caller's dtype: the worker speaks for those
    assert checked_arrays({"pixels": np.zeros((1, 64), np.float32)}, DIGITS)
    blob = ModelBlob.of(ir3_model())
    assert checked_arrays({"x": [1.0, 2.0], "count": np.int32(3)}, blob)
    with pytest.raises(ConfigError, match=r"'count'.*int64.*int32"):
        checked_arrays({"x": [1.0, 2.0], "count": 3}, blob)


def test_the_model_is_read_once_per_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = input_types._read

    def counted(model: bytes) -> dict[str, np.dtype[np.generic]]:
        reads.append(len(model))
        return real(model)

    monkeypatch.setattr(input_types, "_read", counted)
    blob = ModelBlob.of(ir3_model() + b"")  # its own digest: not read by another test
    blob = ModelBlob(blob.data, "test-read-once", blob.name)
    for _ in range(3):
        checked_arrays({"x": [1.0, 2.0]}, blob)
    assert len(reads) == 1


def test_the_client_refuses_before_sending(
    fake_peer: tuple[fakes.FakeMesh, fakes.FakePeer],  # noqa: F811
) -> None:
    mesh, peer = fake_peer
    with (
        Client(f"127.0.0.1:{peer.port}", environ={}) as client,
        pytest.raises(ConfigError, match="numpy makes float64"),
    ):
        client.submit(SHIPPED["digits"], {"pixels": [[0.5] * 64]})
    assert mesh.uploads == [] and mesh.submissions == []
