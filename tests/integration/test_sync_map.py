"""The blocking client's ``map`` through real daemons: read to the end, every task is
acknowledged (``delivered`` in the mesh's table) and nothing is reported uncollected;
left early, exactly the accepted tasks it did not hand over are named, and only they
stay uncollected in the mesh."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from meshgpu.client import Client
from meshgpu.client.localmesh import LocalMesh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = 100


def table(peer: str) -> dict[str, dict]:
    with Client(peer, environ={}) as client:
        return {row["task_id"]: row for row in client.tasks()}


@pytest.mark.parametrize("group", [1, 4, None])
def test_a_map_read_to_the_end_leaves_nothing_uncollected(
    mesh: LocalMesh, digits, caplog, group: int | None
) -> None:
    pixels, _, expected = digits
    peer = mesh.nodes[0].peer
    seen: dict[int, np.ndarray] = {}
    entries: set[str] = set()  # table entries: a task, or the group its member is in
    with (
        caplog.at_level(logging.WARNING, logger="meshgpu.client"),
        Client(peer, environ={}) as client,
    ):
        inputs = ({"pixels": pixels[i : i + 1]} for i in range(COUNT))
        for item in client.map("digits", inputs, window=32, group=group):
            time.sleep(0.002)  # a consumer that works on each result, like saving it
            assert item.index not in seen, "delivered twice"
            assert item.task_id is not None
            seen[item.index] = item.outputs["probabilities"][0]
            head, colon, _ = item.task_id.rpartition(":")
            entries.add(head if colon and "/" in head else item.task_id)
        assert client.uncollected() == [] and client._async.unanswered == 0
    assert "not collected" not in caplog.text
    assert sorted(seen) == list(range(COUNT))
    for index, probabilities in seen.items():
        np.testing.assert_allclose(probabilities, expected[index], rtol=1e-5, atol=1e-6)
    rows = table(peer)
    assert entries <= set(rows)
    assert [task_id for task_id in entries if not rows[task_id]["delivered"]] == []


def test_a_map_left_early_names_the_tasks_it_did_not_hand_over(
    mesh: LocalMesh, digits, caplog
) -> None:
    pixels, _, _ = digits
    peer = mesh.nodes[0].peer
    taken: list[str] = []
    with (
        caplog.at_level(logging.WARNING, logger="meshgpu.client"),
        Client(peer, environ={}) as client,
    ):
        inputs = ({"pixels": pixels[i : i + 1]} for i in range(COUNT))
        for item in client.map("digits", inputs, window=32, group=1, label="left-early"):
            assert item.task_id is not None
            taken.append(item.task_id)
            if len(taken) == 3:
                break
        left = {task_id for task_id, _ in client.uncollected()}
        unanswered = client._async.unanswered
    assert left, "a window of 32 had more tasks out than the 3 taken"
    assert f"map stopped: {len(left)} accepted task(s) not collected" in caplog.text
    assert not left & set(taken)
    rows = table(peer)
    assert all(rows[task_id]["delivered"] for task_id in taken)
    ours = {task_id for task_id, row in rows.items() if row["label"] == "left-early"}
    waiting = {task_id for task_id in ours if not rows[task_id]["delivered"]}
    assert left <= waiting
    if unanswered == 0:  # a submission cut off unanswered may have been accepted unnamed
        assert waiting == left
