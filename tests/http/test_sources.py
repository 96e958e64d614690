"""The daemon side of the HTTP app (daemon/http_sources.py), with fakes for the daemon."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from meshgpu.core.tasks import TaskId
from meshgpu.core.tasks.state import Resolution
from meshgpu.daemon.http_sources import DaemonHttpSources
from meshgpu.errors import MeshError, TaskError
from meshgpu.http.app import DeadlineExceeded, FailedForGood, Unavailable
from meshgpu.http.models import CatalogModel

TASK = TaskId("o", 3)
MODEL = CatalogModel("m", "1", "ab" * 32)


def sources_answering(
    message: dict[str, Any],
    state: Resolution = Resolution.DONE,
    submitted: dict[str, Any] | None = None,
) -> DaemonHttpSources:
    """Sources over a daemon whose task is resolved in ``state`` and whose outcome
    message is ``message`` (what the handlers answer a client asking for it); a submit
    is answered ``submitted``."""

    async def outcome(resolved: Any, first: bool) -> dict[str, Any]:
        return message

    async def submit(request: dict[str, Any]) -> dict[str, Any]:
        assert submitted is not None
        return submitted

    async def resolution() -> None:
        await trio.sleep_forever()

    resolved = SimpleNamespace(state=state, result_holders=("h",))
    handlers = SimpleNamespace(
        resolved={TASK: resolved},
        outcome=outcome,
        submissions=SimpleNamespace(submit=submit),
        resolution=resolution,
    )
    sources = DaemonHttpSources(
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

    async def local_path(model: CatalogModel) -> Path:
        return Path("unused.onnx")

    sources._local_path = local_path  # type: ignore[method-assign]
    return sources


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


@pytest.mark.parametrize(
    ("reason", "answered"),
    [
        ("InputError: input 'x' has shape (1, 3), the model takes [1, 4]", FailedForGood),
        ("ModelError: onnxruntime rejected the model: bad graph", FailedForGood),
        ("UnsupportedOperatorError: onnxruntime cannot run this model", FailedForGood),
        ("deadline exceeded: not done within 2 s of its submission", DeadlineExceeded),
        ("deadline exceeded", DeadlineExceeded),
        ("DeviceError: the device ran out of memory", TaskError),
        ("the result could not be stored on any node: no live node", TaskError),
    ],
)
async def test_a_failed_task_is_answered_by_why_it_failed(
    reason: str, answered: type[MeshError]
) -> None:
    """docs/http-api.md: 400 when its input or model failed it for good (resending cannot
    help), 504 when its deadline passed, 500 for a failure of the mesh's own."""
    message = {"state": "failed", "reason": reason, "outputs": None, "worker": "w"}
    sources = sources_answering(message, Resolution.FAILED)
    with pytest.raises(MeshError) as raised:
        await sources._outcome(TASK)
    assert type(raised.value) is answered
    assert reason in str(raised.value)


async def test_a_direct_run_that_failed_for_good_is_a_bad_request() -> None:
    answer = {"direct": True, "state": "failed", "worker": "w", "task_id": "n/direct-1-1"}
    answer["reason"] = "InputError: input 'x' holds NaN"
    with pytest.raises(FailedForGood, match="failed on w: InputError"):
        await sources_answering({}, submitted=answer).infer(MODEL, {"x": np.zeros(1)})


async def test_a_task_not_done_while_the_node_waits_is_a_gateway_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sources = sources_answering({})
    sources.handlers.resolved.clear()
    with pytest.raises(DeadlineExceeded, match="not done within"):
        await sources._resolution_of(TASK)
