"""What the CLI says when something fails: a deadline names itself, summaries share one
wording. (Key and no-daemon messages need real daemons with and without a key:
tests/integration/test_keyed.py and test_serving.py.)"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
from click.testing import Result

from meshgpu.cli.report import tasks_line
from meshgpu.core.tasks.state import expire
from meshgpu.daemon.status import DEADLINE_REASON, explained_reason
from tests.cli_user.test_collect import cli, serve_and_run
from tests.cli_user.test_preflight import two_input_model


def test_the_deadline_reason_is_the_one_the_core_gives_an_expired_task() -> None:
    assert inspect.signature(expire).parameters["reason"].default == DEADLINE_REASON
    assert "within 2.5 s" in explained_reason(DEADLINE_REASON, 2.5)
    assert explained_reason(DEADLINE_REASON, None) == DEADLINE_REASON
    assert explained_reason("InputError: bad", 2.5) == "InputError: bad"


def test_summaries_say_n_of_m_tasks_one_way() -> None:
    assert tasks_line(1, 1, "done") == "1 of 1 task done"
    assert tasks_line(0, 3, "submitted") == "0 of 3 tasks submitted"


def test_a_task_past_its_deadline_fails_with_the_deadline_named(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    for side in ("a", "b"):
        np.save(tmp_path / f"{side}.npy", np.ones((2, 3), np.float32))

    def scenario(peer: str) -> list[Result]:
        args = ["submit", str(model), "-i", f"a={tmp_path / 'a.npy'}"]
        args += ["-i", f"b={tmp_path / 'b.npy'}", "--deadline", "0.5", "--replicas", "1"]
        return [cli(*args, "-o", str(tmp_path / "out"), "--peer", peer)]

    # A device that holds each task for 5 s: a 0.5 s deadline passes mid-run.
    (result,) = serve_and_run(tmp_path, scenario, device="synthetic:5000")
    assert result.exit_code == 1, result.output
    assert "deadline exceeded: not done within 0.5 s of its submission" in result.stderr
    assert "0 of 1 task done, 1 failed" in result.stderr


def test_a_malformed_placement_label_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    for stem in ("p", "q", "r"):
        np.save(tmp_path / "in" / f"{stem}.npy", np.ones((2, 3), np.float32))
    model = two_input_model(tmp_path / "pair.onnx")
    for option in ("--require", "--prefer"):
        # No daemon on port 9: the check comes first (it failed each task, one line each).
        result = cli("submit", str(model), "-i", f"a={tmp_path / 'in'}", "-i",
                     f"b={tmp_path / 'in'}", option, "gpu", "--peer", "127.0.0.1:9")  # fmt: skip
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '{option}': bad label 'gpu': expected KEY=VALUE" in result.output


def test_run_advises_its_own_flags_not_the_python_api(tmp_path: Path) -> None:
    """``meshgpu run --backend opencl`` on an operator the executor lacks advised
    ``backend='onnxruntime' or allow_fallback=True``, the Python API's words."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"])],
        "hardmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), model)
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    outcome = cli("run", str(model), "-i", f"x={tmp_path / 'x.npy'}", "--backend", "opencl")
    assert outcome.exit_code == 1
    assert "--backend onnxruntime or --allow-fallback" in outcome.output, outcome.output
