"""A handle's outcome callbacks: what ``map`` uses instead of a waiting task per member."""

from __future__ import annotations

from meshgpu.client.handles import AsyncTaskHandle, Outcome


def test_callbacks_run_once_with_the_first_outcome_and_at_once_when_already_resolved() -> None:
    handle = AsyncTaskHandle("n-1/1:0")
    seen: list[tuple[str, str]] = []
    handle.on_resolved(lambda outcome: seen.append(("early", outcome.state)))
    assert seen == []
    assert handle.resolve(Outcome("n-1/1:0", "done", "w-1", outputs={}))
    assert not handle.resolve(Outcome("n-1/1:0", "failed", "w-2"))  # a repeat: dropped
    handle.on_resolved(lambda outcome: seen.append(("late", outcome.state)))
    assert seen == [("early", "done"), ("late", "done")]
