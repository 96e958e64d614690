"""`submit --no-wait` then `collect`: the results come back, once, without a hang.

One daemon in-process (the pattern of tests/daemon/test_runtime.py); the CLI runs in a
worker thread so the daemon keeps serving on the test's trio loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import trio
from click.testing import CliRunner, Result

from meshgpu.cli import main
from meshgpu.cli.collect import read_ids
from meshgpu.daemon.runtime import Daemon
from tests.cli_user.test_preflight import two_input_model
from tests.daemon.test_runtime import settings

WAIT_S = 30.0
STEMS = ["p", "q", "r", "s", "t", "u"]


def serve_and_run(
    tmp_path: Path, scenario: Callable[[str], list[Result]], **changes: Any
) -> list[Result]:
    """Start a lone daemon (its settings with ``changes``: a ``name``, a slow ``device``),
    run ``scenario(peer)`` (blocking CLI calls) in a thread."""
    results: list[Result] = []
    config = dataclasses.replace(settings(tmp_path / "solo"), **changes)

    async def main_task() -> None:
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(Daemon(config).run)
            peer = f"127.0.0.1:{daemon.address[1]}"
            with trio.fail_after(WAIT_S):
                results.extend(await trio.to_thread.run_sync(scenario, peer))
            daemon.request_stop()

    trio.run(main_task)
    return results


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_no_wait_ids_are_collected_into_npz_files_equal_to_onnxruntime(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    rng = np.random.default_rng(3)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        for stem in STEMS:
            np.save(tmp_path / side / f"{stem}.npy", rng.standard_normal((2, 3)).astype("f4"))
    ids = tmp_path / "ids.txt"

    def scenario(peer: str) -> list[Result]:
        submitted = cli(
            "submit", str(model), "-i", f"a={tmp_path / 'a'}", "-i", f"b={tmp_path / 'b'}",
            "--no-wait", "--replicas", "1", "--peer", peer,
        )  # fmt: skip
        ids.write_text(submitted.stdout)
        out = str(tmp_path / "out")
        first = cli("collect", "--ids", str(ids), "-o", out, "--peer", peer, "--json")
        again = cli("collect", "--ids", str(ids), "-o", out, "--peer", peer)
        unknown = cli("collect", "solo/12345", "--peer", peer)
        direct = cli("collect", "solo/direct-0a1b2c-7", "--peer", peer)
        return [submitted, first, again, unknown, direct]

    submitted, first, again, unknown, direct = serve_and_run(tmp_path, scenario)
    assert submitted.exit_code == 0, submitted.output
    assert f"{len(STEMS)} of {len(STEMS)} tasks submitted" in submitted.stderr
    assert sorted(line.split("\t")[1] for line in submitted.stdout.splitlines()) == STEMS
    report = json.loads(first.stdout)
    # Nothing was collected by the submitting command itself (it does not watch its
    # --no-wait tasks): every one is saved here, correct.
    saved = [row for row in report["tasks"] if row["state"] == "done"]
    assert len(saved) == len(STEMS), report
    session = onnxruntime.InferenceSession(str(tmp_path / "pair.onnx"))
    for row in saved:
        a, b = (np.load(tmp_path / side / f"{row['stem']}.npy") for side in ("a", "b"))
        (expected,) = session.run(None, {"a": a, "b": b})
        np.testing.assert_allclose(np.load(row["output"])["s"], expected, rtol=1e-6)
    assert again.exit_code == 1 and "already collected" in again.stderr
    assert unknown.exit_code == 1 and "not in the task table of solo" in unknown.stderr
    # An HTTP answer's task_id of a direct run was "a mistyped id".
    assert direct.exit_code == 1 and "a direct run's id" in direct.stderr


def test_a_waiting_submit_ends_with_a_summary_line(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))

    def scenario(peer: str) -> list[Result]:
        out = str(tmp_path / "out")
        x = str(tmp_path / "x.npy")
        return [cli("submit", str(model), "-i", f"a={x}", "-i", f"b={x}", "-o", out,
                    "--peer", peer)]  # fmt: skip

    (outcome,) = serve_and_run(tmp_path, scenario)
    assert outcome.exit_code == 0, outcome.output
    assert "1 of 1 task done; outputs in" in outcome.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "x.npz")["s"], np.full((2, 3), 2.0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a/1\tp\na/2\tq\n", [("a/1", "p"), ("a/2", "q")]),
        ("# ids\na/1\n\n", [("a/1", "a-1")]),
        (
            '{"tasks": [{"stem": "p", "task_id": "a/1"}, {"stem": "q", "state": "failed"}]}',
            [("a/1", "p")],
        ),
        ('[{"task_id": "g/7:2"}]', [("g/7:2", "g-7-2")]),
        # submit's lines keep a stem's spaces and '#': "a 1" and "a 2" were both "a"
        ("a/1\ta 1\na/2\ta 2\r\na/3\tb#3\n", [("a/1", "a 1"), ("a/2", "a 2"), ("a/3", "b#3")]),
        ("# ids\ta\n a/4 p # typed by hand\n", [("a/4", "p")]),
    ],
)
def test_ids_are_read_from_either_output_of_no_wait(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert read_ids(text) == expected


def test_an_npz_of_outputs_feeds_the_next_submission_by_array_name(tmp_path: Path) -> None:
    """meshgpu's own output format is an input format: the arrays go by name."""
    model = two_input_model(tmp_path / "pair.onnx")
    np.savez(tmp_path / "both.npz", a=np.full((2, 3), 2, np.float32), b=np.ones((2, 3), "f4"))

    def scenario(peer: str) -> list[Result]:
        both = str(tmp_path / "both.npz")
        args = ["submit", str(model), "-i", f"a={both}", "-i", f"b={both}", "--replicas", "1"]
        return [cli(*args, "-o", str(tmp_path / "out"), "--peer", peer)]

    [outcome] = serve_and_run(tmp_path, scenario)
    assert outcome.exit_code == 0, outcome.output
    with np.load(tmp_path / "out" / "both.npz") as saved:
        np.testing.assert_array_equal(saved["s"], np.full((2, 3), 3, np.float32))


@pytest.mark.parametrize("text", ["", "\n# nothing submitted\n", '{"tasks": []}'])
def test_an_ids_file_without_ids_is_named(tmp_path: Path, text: str) -> None:
    """An empty ids file (a `submit --no-wait` that refused everything) is named as such,
    not answered with the line for a command given no ids at all."""
    ids = tmp_path / "empty.txt"
    ids.write_text(text)
    outcome = cli("collect", "--ids", str(ids), "-o", str(tmp_path / "out"))
    assert outcome.exit_code == 2, outcome.output
    assert f"{ids} holds no task ids" in outcome.output
    assert "give task ids as arguments" not in outcome.output


def test_ids_of_a_node_whose_name_holds_a_colon_are_collected(tmp_path: Path) -> None:
    """A task id is cut at its last ':' for a group member's index, as the daemon does;
    collect cut at the first, so every task of node "lab:1" was "not in the task table"."""
    model = two_input_model(tmp_path / "pair.onnx")
    for side in ("a", "b"):
        np.save(tmp_path / f"{side}.npy", np.ones((2, 3), np.float32))

    def scenario(peer: str) -> list[Result]:
        submitted = cli("submit", str(model), "-i", f"a={tmp_path / 'a.npy'}", "-i",
                        f"b={tmp_path / 'b.npy'}", "--no-wait", "--replicas", "1",
                        "--peer", peer)  # fmt: skip
        (tmp_path / "ids.txt").write_text(submitted.stdout)
        return [submitted, cli("collect", "--ids", str(tmp_path / "ids.txt"), "-o",
                               str(tmp_path / "out"), "--peer", peer)]  # fmt: skip

    results = serve_and_run(tmp_path, scenario, name="lab:1")
    submitted, collected = results
    assert submitted.stdout.startswith("lab:1/"), submitted.output
    assert collected.exit_code == 0, collected.output
    assert (tmp_path / "out" / "a.npz").exists()
