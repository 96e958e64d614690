"""A handle's outcome callbacks: what ``map`` uses instead of a waiting task per member."""

from __future__ import annotations

import numpy as np
import pytest

from meshgpu.client.handles import AsyncTaskHandle, Outcome
from meshgpu.errors import ConfigError, ResultTimeoutError


def test_callbacks_run_once_with_the_first_outcome_and_at_once_when_already_resolved() -> None:
    handle = AsyncTaskHandle("n-1/1:0")
    seen: list[tuple[str, str]] = []
    handle.on_resolved(lambda outcome: seen.append(("early", outcome.state)))
    assert seen == []
    assert handle.resolve(Outcome("n-1/1:0", "done", "w-1", outputs={}))
    assert not handle.resolve(Outcome("n-1/1:0", "failed", "w-2"))  # a repeat: dropped
    handle.on_resolved(lambda outcome: seen.append(("late", outcome.state)))
    assert seen == [("early", "done"), ("late", "done")]


async def test_a_timeout_that_is_not_seconds_is_refused_naming_it() -> None:
    handle = AsyncTaskHandle("n-1/2")
    for bad in (-1, float("nan"), "5", True):
        # trio's "ValueError: `seconds` must be non-negative", a TypeError for "5", and
        # True was one second.
        with pytest.raises(ConfigError, match=f"timeout is a number of seconds >= 0.*{bad!r}"):
            await handle.result(timeout=bad)
    with pytest.raises(ResultTimeoutError):
        await handle.result(timeout=0)
    handle.resolve(Outcome("n-1/2", "done", "w-1", outputs={}))
    assert await handle.result(timeout=np.float32(0.5)) == {}


async def test_a_timeout_says_an_attached_id_may_be_unknown_to_the_mesh() -> None:
    """``client.attach("zz/1").result(timeout=3)`` said "it goes on in the mesh" of an id
    no table held; only a task the mesh acknowledged to this client is known to."""
    attached = AsyncTaskHandle("zz/1")
    attached.attached = True  # as AsyncClient.attach makes it
    with pytest.raises(ResultTimeoutError, match="may hold no such task") as raised:
        await attached.result(timeout=0)
    assert "goes on in the mesh" not in str(raised.value)
    submitted = AsyncTaskHandle("n-1/3", copies=2, replicas=2)
    with pytest.raises(ResultTimeoutError, match="it goes on in the mesh"):
        await submitted.result(timeout=0)
