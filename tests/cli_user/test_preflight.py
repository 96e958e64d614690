"""`meshgpu submit` refuses a broken submission before it talks to any daemon.

The peer given is a closed port: without the local check, each of these would end
in "no meshgpu daemon answered" (or, against a live mesh, in one failed task per file
and, for a truncated .npy, a traceback), so the messages asserted here can only come
from the check before sending.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from meshgpu.cli import main
from meshgpu.cli.options import first_mesh_error
from meshgpu.errors import ConfigError

CLOSED_PEER = "127.0.0.1:1"


def two_input_model(path: Path) -> Path:
    """``s = a + b`` over float32 [2, 3]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])],
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def submit(*args: str) -> tuple[int, str]:
    outcome = CliRunner().invoke(main, ["submit", *args, "--peer", CLOSED_PEER])
    assert "Traceback" not in outcome.output
    return outcome.exit_code, outcome.output


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    sample = tmp_path / "t0.npy"
    np.save(sample, np.zeros((2, 3), np.float32))
    return two_input_model(tmp_path / "pair.onnx"), sample


def test_a_truncated_npy_is_named_not_a_traceback(tmp_path: Path) -> None:
    whole = tmp_path / "whole.npy"
    np.save(whole, np.ones((64, 64), np.float32))
    for name, size in (("header.npy", 60), ("data.npy", 5000), ("empty.npy", 0)):
        (tmp_path / name).write_bytes(whole.read_bytes()[:size])
        code, output = submit("digits", "-i", f"pixels={tmp_path / name}")
        assert code == 1 and f"cannot read {tmp_path / name} for input 'pixels'" in output


def test_a_corrupt_model_is_refused_with_the_users_file_name(tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not an onnx model at all " * 8)
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros(3, np.float32))
    code, output = submit(str(model), "-i", f"x={sample}")
    assert code == 1 and "broken.onnx is not a valid ONNX file" in output


def external_weights_model(path: Path) -> Path:
    """``y = x @ w`` with ``w`` saved beside the model (ONNX external data)."""
    weights = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")  # raw_data: movable
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save_model(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def test_a_model_with_external_weights_is_refused_before_sending(tmp_path: Path) -> None:
    # Only the .onnx file travels: each worker would fail the task naming its cache path.
    path = external_weights_model(tmp_path / "external.onnx")
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((1, 2), np.float32))
    code, output = submit(str(path), "-i", f"x={sample}")
    assert code == 1 and "external.onnx keeps weights in external data files" in output


@pytest.mark.parametrize("broken", ["external", "garbage"])
def test_models_add_names_the_users_file_before_uploading(tmp_path: Path, broken: str) -> None:
    path = tmp_path / f"{broken}.onnx"
    if broken == "external":
        external_weights_model(path)
    else:
        path.write_bytes(b"not an onnx model at all " * 8)
    outcome = CliRunner().invoke(main, ["models", "add", "m", str(path), "--peer", CLOSED_PEER])
    assert outcome.exit_code == 1 and "Traceback" not in outcome.output
    assert f"{broken}.onnx " in outcome.output, outcome.output


@pytest.mark.parametrize(
    "option", [("--deadline", "0"), ("--deadline", "nan"), ("--timeout", "-3"), ("--timeout", "x")]
)
def test_a_duration_that_is_not_a_positive_number_is_a_usage_error(
    pair: tuple[Path, Path], option: tuple[str, str]
) -> None:
    # --timeout -3 was a ValueError traceback from trio; --deadline 0 a refused task.
    model, sample = pair
    code, output = submit(str(model), "-i", f"a={sample}", "-i", f"b={sample}", *option)
    assert code == 2 and f"Invalid value for '{option[0]}'" in output


def test_an_unknown_input_name_lists_the_models_inputs(pair: tuple[Path, Path]) -> None:
    model, sample = pair
    code, output = submit(str(model), "-i", f"a={sample}", "-i", f"c={sample}")
    assert code == 1 and "no input named 'c'" in output and "a, b" in output


def defaulted_input_model(path: Path) -> Path:
    """``y = x + bias``, ``bias`` a graph input that is an initializer too (a default)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "defaulted",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.ones(3, np.float32), "bias")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_feed_for_an_input_with_a_default_says_what_the_input_is(tmp_path: Path) -> None:
    """Such a feed passed the check (the name is the model's) and each worker failed the
    task with "unknown input(s) ['bias']; the model's inputs are ['x']"."""
    model = defaulted_input_model(tmp_path / "defaulted.onnx")
    x, bias = tmp_path / "x.npy", tmp_path / "bias.npy"
    np.save(x, np.zeros((2, 3), np.float32))
    np.save(bias, np.zeros(3, np.float32))
    code, output = submit(str(model), "-i", f"x={x}", "-i", f"bias={bias}")
    assert code == 1 and "'bias' have a default value in this model" in output, output
    assert "fixed weights" in " ".join(output.split())


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((1, 64)), "has dtype float64, expected float32"),
        (np.zeros((1, 63), np.float32), "has size 63 on axis 1, expected 64"),
        (np.zeros(64, np.float32), "has rank 1, expected 2"),
    ],
)
def test_a_file_of_the_wrong_dtype_or_shape_is_named_before_sending(
    tmp_path: Path, array: np.ndarray, fragment: str
) -> None:
    """Found by the mesh (the peer here is a closed port), one failed task per file."""
    np.save(tmp_path / "good.npy", np.zeros((1, 64), np.float32))
    np.save(tmp_path / "bad.npy", array)
    code, output = submit("digits", "-i", f"pixels={tmp_path}")
    output = " ".join(output.split())
    assert code == 1 and f"bad.npy: input 'pixels' {fragment}" in output, output


def test_inputs_that_disagree_on_a_symbolic_dimension_are_named(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])],
        "batch",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3])],
    )
    model = tmp_path / "batch.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((5, 3), np.float32))
    code, output = submit(
        str(model), "-i", f"a={tmp_path / 'a.npy'}", "-i", f"b={tmp_path / 'b.npy'}"
    )
    assert code == 1 and "has N=5 on axis 0, but input 'a' has N=2" in " ".join(output.split())


def test_a_model_the_checker_refuses_is_named_by_its_file_before_sending(tmp_path: Path) -> None:
    """Refused by each worker, such a model's message named the daemon's cache path
    (``/data/models/<sha256>.onnx fails the ONNX checker``), not the user's file."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "undefined"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    np.save(tmp_path / "x.npy", np.zeros(2, np.float32))
    code, output = submit(str(model), "-i", f"x={tmp_path / 'x.npy'}")
    output = " ".join(output.split())
    assert code == 1 and "model broken.onnx fails the ONNX checker" in output, output


def test_a_missing_input_is_named(pair: tuple[Path, Path]) -> None:
    model, sample = pair
    code, output = submit(str(model), "-i", f"a={sample}")
    assert code == 1 and "needs input(s) 'b'" in output


def test_a_good_submission_passes_the_check_and_reaches_the_network(
    pair: tuple[Path, Path],
) -> None:
    model, sample = pair
    code, output = submit(str(model), "-i", f"a={sample}", "-i", f"b={sample}")
    assert code == 1 and "no meshgpu daemon answered" in output


def test_a_big_endian_file_of_the_models_dtype_passes_the_check(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A ``>f4`` file for a float32 input is float32: its elements are sent
    little-endian (tensor_types.tensor_bytes) and the worker takes them; the check of
    the headers refused it as "dtype >f4, expected float32"."""
    model, _ = pair
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((2, 3), np.dtype(">f4")))
    code, output = submit(str(model), "-i", f"a={big}", "-i", f"b={big}")
    assert code == 1 and "no meshgpu daemon answered" in output, output


def test_the_mesh_error_inside_nested_groups_is_found() -> None:
    error = ConfigError("cannot read x.npy")
    group = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [error])])
    assert first_mesh_error(group) is error
    assert first_mesh_error(BaseExceptionGroup("other", [KeyError("k")])) is None


def test_an_output_directory_that_cannot_be_made_stops_before_sending(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    model, sample = pair
    blocker = tmp_path / "file"
    blocker.write_text("a file where a parent directory should be")
    code, output = submit(
        str(model), "-i", f"a={sample}", "-i", f"b={sample}", "-o", str(blocker / "out")
    )
    assert code == 1 and f"cannot create the output directory {blocker / 'out'}" in output


def test_strings_text_and_npz_without_the_array_stop_before_anything_is_sent(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    model, sample = pair
    words = tmp_path / "words.npy"
    np.save(words, np.array(["hello", "world"]))
    table = tmp_path / "table.csv"
    table.write_text("1,2,3\n4,5,6\n")
    other = tmp_path / "other.npz"
    np.savez(other, left=np.zeros((2, 3), np.float32), right=np.zeros((2, 3), np.float32))
    for bad, expected in (
        (words, "holds a <U5 array (strings)"),
        (table, "is a text file, not a .npy array"),
        (other, "holds 'left', 'right' and no array named 'a'"),
    ):
        code, output = submit(str(model), "-i", f"a={bad}", "-i", f"b={sample}")
        assert code == 1 and expected in output, output
        assert "no meshgpu daemon answered" not in output  # refused before the network
        assert "allow_pickle" not in output


def test_inputs_over_max_task_bytes_are_refused_with_both_sizes(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    model, sample = pair  # a and b: 24 bytes each, 48 for the task
    np.savez(tmp_path / "both.npz", a=np.zeros((2, 3), "f4"), b=np.zeros((2, 3), "f4"))
    for inputs in (
        [f"a={sample}", f"b={sample}"],
        [f"a={tmp_path / 'both.npz'}", f"b={tmp_path / 'both.npz'}"],
    ):
        args = [part for spec in inputs for part in ("-i", spec)]
        code, output = submit(str(model), *args, "--max-task-bytes", "47")
        assert code == 1
        assert "inputs are 48 bytes, more than max_task_bytes (47)" in output
    code, output = submit(
        str(model), "-i", f"a={sample}", "-i", f"b={sample}", "--max-task-bytes", "48"
    )
    assert "max_task_bytes" not in output  # within the limit: on to the (closed) peer
