"""What the commands print when things go partly wrong: counts, sentences, no KeyError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from meshgpu.cli import main
from meshgpu.cli import submit as submit_module
from meshgpu.cli.demo import _running_after_kill, _running_text
from meshgpu.cli.report import ERRORS_SHOWN, outcome_line
from meshgpu.cli.status import _groups_note, member_rows


def test_the_kill_line_says_how_many_tasks_in_words() -> None:
    assert _running_text(0) == "it was running no task"
    assert _running_text(1) == "it was running 1 task"
    assert _running_text(3) == "it was running 3 tasks"


def test_the_failover_line_says_what_became_of_the_killed_nodes_tasks() -> None:
    def line(running: int, answered: int, every_task_answered: bool = True) -> str:
        killed = {"running_at_kill": running, "running_answered": answered, "answered_s": 1.23}
        return _running_after_kill(killed, every_task_answered)

    assert line(0, 0) == "it was running no task"
    assert line(4, 4) == "its 4 running task(s) finished elsewhere after 1.23 s"
    everything = line(4, 0)  # all answered, none by the ids the victim held: copies
    assert "no result" not in everything and "every task was answered" in everything
    assert everything.startswith("the 4 it was running were copies")
    mixed = line(4, 1)
    assert mixed.startswith("1 of its 4 running task(s) finished elsewhere after 1.23 s")
    assert "the other 3" in mixed and "every task was answered" in mixed
    missing = line(4, 1, every_task_answered=False)
    assert "no result seen after the kill for 3 of its 4 running task(s)" in missing


def test_status_names_usable_devices_and_models_on_fallback() -> None:
    load = {
        "active_tasks": 0,
        "free_slots": 4,
        "devices": ["cpu"],
        "fp16": False,
        "usable_devices": ["onnxruntime:cpu"],
        "fallback_models": ["0123456789abcdef"],
    }
    member = {"node_id": "n-1", "state": "alive", "address": ["h", 1], "load": load}
    (row,) = member_rows({"members": [member]})
    assert row["devices"] == "onnxruntime:cpu; on onnxruntime: 0123456789abcdef"
    older = {k: v for k, v in load.items() if k not in ("usable_devices", "fallback_models")}
    (row,) = member_rows({"members": [{**member, "load": older}]})
    assert row["devices"] == "cpu"  # a load without device reports: the types, as before


def test_status_shows_node_labels_after_the_devices() -> None:
    load = {"active_tasks": 0, "free_slots": 2, "devices": ["gpu"], "fp16": False}
    labelled = {**load, "labels": {"room": "b12", "gpu": "a100"}}
    member = {"node_id": "n-1", "state": "alive", "address": ["h", 1], "load": labelled}
    (row,) = member_rows({"members": [member]})
    assert row["devices"] == "gpu; gpu=a100 room=b12"
    (row,) = member_rows({"members": [{**member, "load": load}]})
    assert row["devices"] == "gpu"


def test_the_groups_note_counts_members_of_all_groups_together() -> None:
    assert _groups_note({"entries": 0, "members": 0}) == ""
    assert _groups_note({"entries": 15, "members": 33}) == (
        " (15 of them task groups, 33 tasks in all)"
    )


def test_a_no_wait_summary_warns_of_fewer_copies_than_replicas() -> None:
    rows = [{"stem": "a", "task_id": "n/1", "copies": 1, "state": "submitted"}]
    line = outcome_line({"tasks": rows}, Path("out"), no_wait=True, replicas=2)
    assert line.startswith("1 of 1 task submitted") and "only 1 node(s)" in line
    assert "meshgpu collect" in line
    assert "only" not in outcome_line({"tasks": rows}, Path("out"), no_wait=True, replicas=1)


@pytest.fixture
def fake_mesh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """`submit` against a canned report: one task refused, many failed alike."""
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))

    async def canned(*args: Any) -> dict[str, Any]:
        no_wait = args[6]
        refused = {"stem": "bad", "state": "failed", "error": "task refused: disk full"}
        if no_wait:
            ok = {"stem": "x", "task_id": "n/1", "copies": 2, "state": "submitted"}
            return {"tasks": [ok, refused], "submitted": 2}
        rows = [dict(refused, stem=f"s{i}") for i in range(ERRORS_SHOWN + 5)]
        return {"tasks": rows, "done": 0, "failed": len(rows), "failovers": []}

    monkeypatch.setattr(submit_module, "_run", canned)
    return tmp_path / "x.npy"


def test_no_wait_text_lists_ids_and_names_a_refused_task(fake_mesh: Path) -> None:
    outcome = CliRunner().invoke(main, ["submit", "digits", "-i", str(fake_mesh), "--no-wait"])
    assert outcome.exit_code == 1, outcome.output
    assert outcome.stdout == "n/1\tx\n"
    assert "error: bad: task refused: disk full" in outcome.stderr
    assert "1 of 2 tasks submitted" in outcome.stderr


def test_many_identical_failures_are_cut_short_with_a_count(fake_mesh: Path) -> None:
    outcome = CliRunner().invoke(main, ["submit", "digits", "-i", str(fake_mesh)])
    assert outcome.exit_code == 1
    assert outcome.stderr.count("task refused: disk full") == ERRORS_SHOWN
    assert "and 5 more failed" in outcome.stderr
    assert f"0 of {ERRORS_SHOWN + 5} tasks done, {ERRORS_SHOWN + 5} failed" in outcome.stderr


def test_run_takes_a_bare_path_like_submit_and_shows_integers_exactly(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["i"], ["k"])],
        "ids",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("k", TensorProto.INT64, [2])],
    )
    model = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    np.save(tmp_path / "i.npy", np.array([7, 2**40 + 3], np.int64))
    args = ["run", str(model), "-i", str(tmp_path / "i.npy"), "--backend", "onnxruntime"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    assert "1099511627779" in outcome.stdout and "e+12" not in outcome.stdout
    # An --output in no directory: one line before the run (a numpy traceback after it).
    missing = ["-o", str(tmp_path / "no" / "out.npz")]
    refused = CliRunner().invoke(main, args + missing)
    assert (
        refused.exit_code == 2
        and "directory" in refused.output
        and "does not exist" in refused.output
    )
    assert "Traceback" not in refused.output


def test_status_says_when_the_peer_is_leaving(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshgpu.cli import status as status_module

    answer = {
        "node": {"node_id": "n-1", "mesh": "lab", "address": ["10.0.0.1", 7946],
                 "keyed": False, "uptime_s": 5.0, "leaving": True},
        "leader": "n-1", "view": 2, "queue_length": 0, "tasks": {},
        "members": [{"node_id": "n-1", "state": "alive", "address": ["10.0.0.1", 7946],
                     "incarnation": 0}],
    }  # fmt: skip
    monkeypatch.setattr(status_module, "_ask", lambda *args, **kwargs: answer)
    outcome = CliRunner().invoke(main, ["status"])
    assert outcome.exit_code == 0, outcome.output
    assert "LEAVING" in outcome.stdout
    answer["node"]["leaving"] = False
    assert "LEAVING" not in CliRunner().invoke(main, ["status"]).stdout


@pytest.mark.parametrize(("state", "line"), [(None, "no tasks"), ("failed", "no failed tasks")])
def test_an_empty_task_list_says_so(
    monkeypatch: pytest.MonkeyPatch, state: str | None, line: str
) -> None:
    """``tasks --state failed`` with none printed a table's empty frame."""
    from meshgpu.cli import status as status_module

    monkeypatch.setattr(status_module, "_ask", lambda *args, **kwargs: {"tasks": []})
    outcome = CliRunner().invoke(main, ["tasks", *(["--state", state] if state else [])])
    assert outcome.exit_code == 0 and outcome.stdout == f"{line} in the table\n", outcome.output
