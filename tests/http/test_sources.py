"""The daemon side of the HTTP app (daemon/http_sources.py), with fakes for the daemon."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from meshgpu.core.tasks import TaskId
from meshgpu.core.tasks.state import Resolution
from meshgpu.daemon.http_sources import DaemonHttpSources
from meshgpu.http.app import Unavailable

TASK = TaskId("o", 3)


def sources_answering(message: dict[str, Any]) -> DaemonHttpSources:
    """Sources over a daemon whose task is resolved DONE and whose outcome message is
    ``message`` (what the handlers answer a client asking for it)."""

    async def outcome(resolved: Any, first: bool) -> dict[str, Any]:
        return message

    resolved = SimpleNamespace(state=Resolution.DONE, result_holders=("h",))
    handlers = SimpleNamespace(resolved={TASK: resolved}, outcome=outcome)
    return DaemonHttpSources(
        "n",
        None,  # type: ignore[arg-type]
        handlers=handlers,  # type: ignore[arg-type]
        status=None,  # type: ignore[arg-type]
        transfers=None,  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        models=None,  # type: ignore[arg-type]
        catalog=None,  # type: ignore[arg-type]
        peers=None,  # type: ignore[arg-type]
        feed=lambda event: None,
        ready=lambda: True,
        leaving=lambda: False,
    )


async def test_a_done_task_whose_result_cannot_be_fetched_now_is_unavailable() -> None:
    """Answered 503 (try again), not 500: the task is done, its holders unreachable."""
    message = {
        "state": "unavailable",
        "reason": "done, but the result cannot be fetched now: no holder answered",
        "outputs": None,
        "worker": "w",
    }
    with pytest.raises(Unavailable, match="cannot be fetched now"):
        await sources_answering(message)._outcome(TASK)
