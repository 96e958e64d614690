"""The dashboard's sampler on its own (fakes for the status, the task table and the
catalog): it walks the task table only while a page watches."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from meshgpu.http.dashboard import Dashboard
from meshgpu.http.metrics import InferenceStats


def dashboard() -> tuple[Dashboard, list[int]]:
    walks: list[int] = []

    def tasks() -> list[dict[str, Any]]:
        walks.append(1)
        return [{"task_id": str(number)} for number in range(100)]

    status: dict[str, Any] = {"members": [], "node": {"node_id": "n0"}, "leader": None, "view": 0}
    return Dashboard(lambda: status, tasks, dict, InferenceStats()), walks


def test_nobody_watching_the_task_table_is_not_walked() -> None:
    board, walks = dashboard()
    assert board.sample()["tasks"] == []
    assert walks == []


async def test_a_page_that_opens_gets_the_last_tasks_at_once_and_after_every_sample() -> None:
    board, walks = dashboard()
    board.state = board.sample()  # the sampler ran before anyone watched
    stream = board.stream()
    assert isinstance(stream, AsyncGenerator)
    first = await stream.__anext__()
    assert b'"task_id":"99"' in first and b'"task_id":"49"' not in first
    assert board.watchers == 1
    assert len(board.sample()["tasks"]) == 50
    await stream.aclose()
    assert board.watchers == 0
    assert board.sample()["tasks"] == []
    assert len(walks) == 2
