"""Task messages on the wire: round trips, and garbage raises only DecodeError."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from meshgpu.core.tasks import TaskEntry, TaskId, TaskSpec
from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.messages import HoldRequest, TaskDigest, TaskUpdate, TaskWant
from meshgpu.core.tasks.wire import entry_to_wire
from meshgpu.errors import DecodeError

ENTRY = TaskEntry(
    TaskId("n-0001", 2**45 + 3),
    TaskSpec("sha256-model", "sha256-input", (("x", (1, 3, 8, 8)),)),
    st.retry(st.assign(st.PENDING, 4, "n-0002"), "device lost"),
    frozenset({"n-0001", "n-0003"}),
    frozenset({"n-0001"}),
)


def test_round_trips() -> None:
    update = TaskUpdate((ENTRY, ENTRY), (("n-0001", 5, 9),), reply=True)
    assert TaskUpdate.from_fields(update.to_fields()) == update
    hold = HoldRequest(ENTRY)
    assert HoldRequest.from_fields(hold.to_fields()) == hold
    digest = TaskDigest((("n-0001", 2**45, 2**32 - 1),), (("n-0002", 1, 1),))
    assert TaskDigest.from_fields(digest.to_fields()) == digest
    want = TaskWant((("n-0001", 7),))
    assert TaskWant.from_fields(want.to_fields()) == want


def test_handover_flag_round_trips_and_an_update_without_it_still_decodes() -> None:
    handover = TaskUpdate((ENTRY,), (), reply=False, handover=True)
    assert TaskUpdate.from_fields(handover.to_fields()) == handover
    plain = TaskUpdate((ENTRY,))
    assert len(plain.to_fields()) == 3  # the three-field form of peers that never set it
    assert TaskUpdate.from_fields(plain.to_fields()).handover is False


json_like = hs.recursive(
    hs.none() | hs.booleans() | hs.integers(-5, 2**64) | hs.floats() | hs.text(max_size=8),
    lambda children: hs.lists(children, max_size=8),
    max_leaves=40,
)


def _mutations(value: Any) -> hs.SearchStrategy[Any]:
    """The valid wire form with one leaf or list replaced by anything."""
    if not isinstance(value, list) or not value:
        return json_like
    return hs.integers(0, len(value) - 1).flatmap(
        lambda i: _mutations(value[i]).map(lambda new: [*value[:i], new, *value[i + 1 :]])
    )


@given(_mutations([[entry_to_wire(ENTRY)], [["n-0001", 1, 2]], False]))
def test_mutated_updates_raise_only_decode_error(fields: Any) -> None:
    with contextlib.suppress(DecodeError):
        TaskUpdate.from_fields(fields)


@given(json_like)
def test_garbage_raises_only_decode_error(fields: Any) -> None:
    for cls in (TaskUpdate, HoldRequest, TaskDigest, TaskWant):
        with contextlib.suppress(DecodeError):
            cls.from_fields(fields if isinstance(fields, list) else [fields])


def test_inverted_run_is_rejected() -> None:
    with pytest.raises(DecodeError):
        TaskUpdate.from_fields([[], [["n-0001", 9, 2]], False])
