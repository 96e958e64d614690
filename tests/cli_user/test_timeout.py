"""``meshgpu submit --timeout`` that stops before every task was sent: the tasks never
sent have no id, and listing the ones left in the mesh raised KeyError('task_id')."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from click.testing import Result

from meshgpu.client import AsyncClient
from meshgpu.client.batches import new_submission_id
from meshgpu.daemon.api import Message
from meshgpu.daemon.submissions import Submissions
from tests.cli_user.test_collect import cli, serve_and_run
from tests.cli_user.test_preflight import two_input_model


def test_a_timeout_before_every_task_was_sent_lists_only_the_tasks_sent(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    (tmp_path / "a").mkdir()
    for n in range(70):  # more than map's window of 64: the last ones wait to be sent
        np.save(tmp_path / "a" / f"t{n:02d}.npy", np.ones((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((2, 3), np.float32))
    ids = tmp_path / "ids.txt"

    def scenario(peer: str) -> list[Result]:
        args = ["submit", str(model), "-i", f"a={tmp_path / 'a'}", "-i", f"b={tmp_path / 'b.npy'}"]
        args += ["--timeout", "1", "--replicas", "1", "-o", str(tmp_path / "out")]
        return [
            cli(*args, "--ids", str(ids), "--peer", peer),
            cli(*args, "--peer", peer),
        ]

    for result in serve_and_run(tmp_path, scenario, device="synthetic:5000"):
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = ids.read_text().splitlines()
    assert len(lines) <= 64
    assert all(line.split("\t")[0].count("/") == 1 for line in lines)


def test_a_timeout_that_cuts_off_an_accepted_batch_lists_its_tasks_by_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry node accepts the batch but answers after ``--timeout`` and the stopping
    map's grace (a 16 MiB batch on a loaded machine): the tasks were reported as "not
    submitted" and the ids file stayed empty, though the mesh ran them. The map settles
    the cut-off request with the peer (``settle_submissions``) and lists them by id."""
    model = two_input_model(tmp_path / "pair.onnx")
    (tmp_path / "a").mkdir()
    for n in range(6):
        np.save(tmp_path / "a" / f"t{n}.npy", np.ones((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((2, 3), np.float32))
    ids = tmp_path / "ids.txt"
    submit_batch = Submissions.submit_batch

    async def slow_answer(self: Submissions, request: Message) -> Message:
        answer = await submit_batch(self, request)  # accepted: in the table
        await trio.sleep(4)
        return answer

    monkeypatch.setattr(Submissions, "submit_batch", slow_answer)

    def scenario(peer: str) -> list[Result]:
        args = ["submit", str(model), "-i", f"a={tmp_path / 'a'}", "-i", f"b={tmp_path / 'b.npy'}"]
        args += ["--timeout", "1", "--replicas", "1", "-o", str(tmp_path / "out")]
        return [cli(*args, "--ids", str(ids), "--peer", peer, "--json")]

    (result,) = serve_and_run(tmp_path, scenario, device="synthetic:5000")
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout.splitlines()[-1])["tasks"]
    assert {row["state"] for row in rows} == {"timeout"}, rows
    listed = ids.read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in listed) == [f"t{n}" for n in range(6)]
    assert all(line.split("\t")[0].count("/") == 1 for line in listed)


def test_settle_names_what_a_cut_off_submit_many_left_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``client.settle`` (what ``submit --no-wait`` asks after a Ctrl-C cut its batch
    off): the tasks of a request answered late by id, a request never sent as withdrawn."""
    model = two_input_model(tmp_path / "pair.onnx")
    submit_batch = Submissions.submit_batch

    async def slow_answer(self: Submissions, request: Message) -> Message:
        answer = await submit_batch(self, request)
        await trio.sleep(3)
        return answer

    monkeypatch.setattr(Submissions, "submit_batch", slow_answer)
    inputs = [{"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.float32)}] * 3

    def scenario(peer: str) -> list[Any]:
        async def run() -> list[Any]:
            async with AsyncClient(peer, environ={}) as client:
                ids, sent_on = [new_submission_id() for _ in inputs], []
                with trio.move_on_after(1):
                    await client.submit_many(
                        model, inputs, watch=False, submissions=ids, sent_on=sent_on, replicas=1
                    )
                accepted = await client.settle(ids, sent_on)
                never_sent = await client.settle(["x"], [])
                return [*accepted, *never_sent]

        return trio.run(run)

    answers = serve_and_run(tmp_path, scenario, device="synthetic:5000")
    assert all(answer["task_id"].count("/") == 1 for answer in answers[:3]), answers
    assert answers[3] == {"withdrawn": True}
