"""The task book: one record per task, dropped in one place."""

from __future__ import annotations

from meshgpu.core.tasks.book import TaskBook
from meshgpu.core.tasks.spec import TaskId

TID = TaskId("n000", 7)


def test_a_record_starts_at_its_first_sight_and_readers_default_to_the_given_time() -> None:
    book = TaskBook()
    assert book.first_seen(TID, 9.0) == 9.0 and book.retry_at(TID, 9.0) == 9.0
    facts = book.seen(TID, 2.0)
    assert (facts.first_seen, facts.state_since) == (2.0, 2.0)
    assert book.acknowledged_at(TID, 5.0) == 5.0  # not acknowledged yet: the default
    facts.acknowledged_at, facts.retry_at, facts.orphaned_at = 3.0, 4.0, 4.5
    facts.assigned_seen[1] = 3.5
    assert book.acknowledged_at(TID, 5.0) == 3.0
    assert book.retry_at(TID, 5.0) == 4.0 and book.orphaned_at(TID, 5.0) == 4.5
    assert book.assigned_at(TID, 1) == 3.5 and book.assigned_at(TID, 2) is None


def test_forget_drops_the_record_and_every_index() -> None:
    book = TaskBook()
    book.seen(TID, 1.0).assigned_seen[1] = 1.5
    book.open.add(TID)
    book.collect_at[TID] = 6.0
    book.forget(TID)
    assert TID not in book and not book.open and not book.collect_at and len(book) == 0
    assert book.assigned_at(TID, 1) is None and book.state_since(TID, 8.0) == 8.0
