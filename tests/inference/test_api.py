"""The public inference API: load(), backend choice, sessions, and `meshgpu run`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from meshgpu import inference
from meshgpu.cli import main
from meshgpu.errors import DeviceError, InferenceError, UnsupportedOperatorError
from meshgpu.inference.model import SHIPPED_MODELS

from .tiny_models import scalar_model, two_input_model, unsupported_op_model

DIGITS = SHIPPED_MODELS["digits"]


@pytest.fixture(scope="module")
def digits_batch() -> np.ndarray:
    with np.load(DIGITS.with_name("digits_test.npz")) as data:
        return np.asarray(data["pixels"][:16])


@pytest.mark.parametrize("backend", ["opencl", "onnxruntime"])
def test_session_describes_the_model(backend: str, digits_batch: np.ndarray) -> None:
    session = inference.load("digits", backend=backend)  # type: ignore[arg-type]
    assert session.backend == backend
    assert session.device.backend == backend
    assert session.inputs == {"pixels": (("N", 64), np.dtype("float32"))}
    assert session.outputs == ["probabilities"]
    results = session.run({"pixels": digits_batch})
    assert list(results) == ["probabilities"]
    assert results["probabilities"].shape == (16, 10)
    np.testing.assert_allclose(results["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert session.peak_device_bytes >= 0


def test_auto_picks_opencl_when_every_operator_is_supported() -> None:
    session = inference.load(DIGITS)
    assert session.backend == "opencl"
    assert "every operator is supported" in session.backend_reason


def test_auto_falls_back_and_says_which_operator() -> None:
    session = inference.load(unsupported_op_model(), backend="auto")
    assert session.backend == "onnxruntime"
    assert "Det" in session.backend_reason and "determinant" in session.backend_reason
    value = session.run({"x": np.eye(3, dtype=np.float32) * 2})["y"]
    assert float(value) == pytest.approx(8.0)


def test_explicit_opencl_never_silently_falls_back() -> None:
    with pytest.raises(UnsupportedOperatorError) as raised:
        inference.load(unsupported_op_model(), backend="opencl")
    assert "Det (opset 13, node 'determinant')" in str(raised.value)
    session = inference.load(unsupported_op_model(), backend="opencl", allow_fallback=True)
    assert session.backend == "onnxruntime"
    assert "allow_fallback=True" in session.backend_reason


def test_path_bytes_and_proto_give_the_same_digest() -> None:
    data = DIGITS.read_bytes()
    expected = hashlib.sha256(data).hexdigest()
    assert inference.load(DIGITS, backend="onnxruntime").digest == expected
    assert inference.load(data, backend="onnxruntime").digest == expected
    assert inference.load("digits", backend="onnxruntime").digest == expected


def test_device_implies_backend_and_conflicts_are_errors() -> None:
    assert inference.load("digits", device="onnxruntime:cpu").backend == "onnxruntime"
    assert inference.load("digits", device="opencl:0").backend == "opencl"
    with pytest.raises(DeviceError, match="onnxruntime:cpu"):
        inference.load("digits", backend="opencl", device="onnxruntime:cpu")
    with pytest.raises(DeviceError, match="opencl:0"):
        inference.load("digits", backend="onnxruntime", device="opencl:0")
    with pytest.raises(InferenceError, match="unknown backend 'cuda'"):
        inference.load("digits", backend="cuda")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["opencl", "onnxruntime"])
def test_a_scalar_input_stays_a_scalar(backend: str) -> None:
    # np.ascontiguousarray makes a rank-0 array shape (1,): the feed checks must not use it.
    session = inference.load(scalar_model(), backend=backend)  # type: ignore[arg-type]
    results = session.run({"x": np.array(3.0, np.float32)})
    assert results["square"].shape == ()
    assert float(results["square"]) == 9.0


@pytest.mark.parametrize("backend", ["opencl", "onnxruntime"])
def test_symbolic_batch_shared_between_inputs(backend: str) -> None:
    session = inference.load(two_input_model(), backend=backend)  # type: ignore[arg-type]
    a = np.arange(15, dtype=np.float32).reshape(5, 3)
    result = session.run({"a": a, "b": a * 2})["sum"]
    np.testing.assert_array_equal(result, a * 3)


def test_cli_run_prints_json_and_writes_npz(tmp_path: Path, digits_batch: np.ndarray) -> None:
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, digits_batch)
    output = tmp_path / "out.npz"
    result = CliRunner().invoke(
        main,
        ["run", "digits", "--input", f"pixels={pixels}", "--output", str(output), "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["backend"] in ("opencl", "onnxruntime") and summary["backend_reason"]
    assert summary["outputs"]["probabilities"]["shape"] == [16, 10]
    with np.load(output) as saved:
        expected = inference.load("digits", backend="onnxruntime").run({"pixels": digits_batch})
        np.testing.assert_allclose(
            saved["probabilities"], expected["probabilities"], rtol=1e-4, atol=1e-6
        )


def test_cli_run_table_shows_predictions(tmp_path: Path, digits_batch: np.ndarray) -> None:
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, digits_batch[:3])
    result = CliRunner().invoke(
        main, ["run", "digits", "-i", f"pixels={pixels}", "--backend", "onnxruntime"]
    )
    assert result.exit_code == 0, result.output
    assert "probabilities" in result.output and "argmax" in result.output


def test_cli_run_reads_the_files_submit_reads(tmp_path: Path, digits_batch: np.ndarray) -> None:
    # An .npz was handed to the session as an NpzFile ("convert with numpy.asarray").
    archive = tmp_path / "batch.npz"
    np.savez(archive, pixels=digits_batch[:2])
    for spec in (f"pixels={archive}", str(archive)):
        result = CliRunner().invoke(
            main, ["run", "digits", "-i", spec, "--backend", "onnxruntime", "--json"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["outputs"]["probabilities"]["shape"] == [2, 10]
    text = tmp_path / "pixels.csv"
    text.write_text(",".join(["0"] * 64) + "\n")
    result = CliRunner().invoke(main, ["run", "digits", "-i", f"pixels={text}"])
    assert result.exit_code == 2 and "is a text file" in result.output


def test_cli_run_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 63), np.float32))
    result = CliRunner().invoke(main, ["run", "digits", "--input", f"pixels={wrong}"])
    assert result.exit_code == 1
    assert "InputError" in result.output and "'pixels'" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["run", "digits", "--input", "pixels"])
    assert result.exit_code == 2 and "NAME=FILE.npy" in result.output


@pytest.mark.parametrize("content", [b"not onnx at all", None])
def test_cli_run_of_an_unreadable_model_with_a_bare_input_names_the_model(
    tmp_path: Path, content: bytes | None
) -> None:
    """It said "'x.npy' is not NAME=FILE.npy", the input's syntax, for a model that is no
    ONNX file or no file at all; with NAME= the same run named the model's problem."""
    model = tmp_path / "model.onnx"
    if content is not None:
        model.write_bytes(content)
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros(3, np.float32))
    result = CliRunner().invoke(main, ["run", str(model), "-i", str(sample)])
    assert result.exit_code == 1, result.output
    assert "ModelError" in result.output and "NAME=FILE" not in result.output


def test_cli_run_table_shows_a_zero_size_output_as_empty(tmp_path: Path) -> None:
    """A (0, 4) output's preview read "argmax" with nothing after it."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "neg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
    )
    model = tmp_path / "neg.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((0, 4), np.float32))
    result = CliRunner().invoke(
        main, ["run", str(model), "-i", str(sample), "--backend", "onnxruntime"]
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "[0, 4]" in line)
    assert "(empty)" in row and "argmax" not in row


@pytest.mark.parametrize("elements", [4, 4096])
def test_a_model_with_external_data_is_refused_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, elements: int
) -> None:
    """A weight of 1,024 elements or more in an external data file slipped past the check
    (the check reads a skeleton of the model, large weights made inputs): the run then
    worked only with the current directory holding the data file, and elsewhere failed
    with onnxruntime's "escapes working directory" or "is not regular file"."""
    weights = onnx.numpy_helper.from_array(np.ones(elements, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])],
        [weights],
    )
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "external.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        model,
        save_as_external_data=True,
        location="external.onnx.data",
        size_threshold=0,
    )
    sample = tmp_path / "x.npy"
    np.save(sample, np.ones(elements, np.float32))
    monkeypatch.chdir(tmp_path)
    for spec in (f"x={sample}", str(sample)):
        result = CliRunner().invoke(main, ["run", str(model), "-i", spec])
        assert result.exit_code == 1, result.output
        assert "ModelError" in result.output and "external data" in result.output
        assert "NAME=FILE" not in result.output


def test_cli_run_names_a_models_inputs_for_a_bare_file_it_cannot_place(tmp_path: Path) -> None:
    """`meshgpu run two_inputs.onnx -i both.npz` said only "is not NAME=FILE.npy"."""
    model = tmp_path / "two.onnx"
    onnx.save(two_input_model(), model)
    names = [value.name for value in two_input_model().graph.input]
    both = tmp_path / "both.npz"
    np.savez(both, **{name: np.zeros(1, np.float32) for name in names})
    result = CliRunner().invoke(main, ["run", str(model), "-i", str(both)])
    assert result.exit_code == 2, result.output
    assert all(name in result.output for name in names)
    assert f"-i {names[0]}=" in result.output.replace("\n", " ")
