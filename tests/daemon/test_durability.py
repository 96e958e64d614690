"""The daemon's journal records: collected tasks fold into runs (the journal no longer
grows by one tombstone per task forever), and a replay gives the core the same records."""

from __future__ import annotations

from pathlib import Path

from meshgpu.core.tasks import TaskId, TaskRecord, record_to_bytes
from meshgpu.core.tasks.spec import TaskSpec
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.daemon.durability import COLLECTED_KEY, GroupCommit
from meshgpu.daemon.journal import Journal
from meshgpu.errors import StorageError


def entry(sequence: int) -> TaskEntry:
    spec = TaskSpec(model_digest="a" * 64, input_digest="b" * 64, input_shapes=())
    return TaskEntry(TaskId("n-a", sequence), spec, holders=frozenset({"n-a"}))


def commit_of(journal: Journal, fold_every: int = 49) -> GroupCommit:
    failures: list[StorageError] = []
    return GroupCommit(journal, lambda name: None, failures.append, fold_every=fold_every)


def test_collected_tasks_fold_into_runs_and_compaction_drops_their_records(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path, compact_min_bytes=0)
    commit = commit_of(journal)
    for sequence in range(100):
        commit.persist(TaskRecord(TaskId("n-a", sequence), entry(sequence)))
    assert commit.holder_seq == journal.written_seq  # each first record made us a holder
    for sequence in range(98):  # two folds of 49
        commit.persist(TaskRecord(TaskId("n-a", sequence), None))
    journal.sync()
    assert {key for key, _ in journal.items()} == {COLLECTED_KEY, ("n-a", 98), ("n-a", 99)}
    assert journal.get(COLLECTED_KEY) == [["n-a", 0, 97]]
    journal.compact()
    size = (tmp_path / "journal.log").stat().st_size
    assert size < 2000  # two entries and one run, not 98 tombstones
    journal.close()
    replayed = commit_of(Journal.open(tmp_path)).replay()
    tombstones = [r.task_id.sequence for r in replayed if r.entry is None]
    assert tombstones == list(range(98))
    assert [r.task_id.sequence for r in replayed if r.entry is not None] == [98, 99]


def test_per_task_tombstones_of_an_older_journal_are_folded_at_start(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    for sequence in (5, 6, 9):
        journal.put(("n-b", sequence), record_to_bytes(TaskRecord(TaskId("n-b", sequence), None)))
    journal.put(("n-a", 1), record_to_bytes(TaskRecord(TaskId("n-a", 1), entry(1))))
    commit = commit_of(journal)
    records = commit.replay()
    assert [(r.task_id.origin, r.task_id.sequence, r.entry is None) for r in records] == [
        ("n-b", 5, True),
        ("n-b", 6, True),
        ("n-b", 9, True),
        ("n-a", 1, False),
    ]
    assert {key for key, _ in journal.items()} == {COLLECTED_KEY, ("n-a", 1)}
    assert journal.synced_seq == journal.written_seq


def test_scattered_collections_cost_linear_journal_writes(tmp_path: Path) -> None:
    """A holder of every other task of an origin (replicas on a few of many nodes) has
    one run per collected task: folding at each collection rewrote every run each time
    (quadratic: about 30 MB for these 2,000); folding in batches keeps it linear."""
    journal = Journal.open(tmp_path, compact_min_bytes=1 << 40)  # no compaction here
    commit = commit_of(journal, fold_every=256)
    for sequence in range(0, 4000, 2):
        commit.persist(TaskRecord(TaskId("n-a", sequence), entry(sequence)))
    before = (tmp_path / "journal.log").stat().st_size
    for sequence in range(0, 4000, 2):
        commit.persist(TaskRecord(TaskId("n-a", sequence), None))
    commit.fold()
    journal.sync()
    written = (tmp_path / "journal.log").stat().st_size - before
    assert written < 2_000_000, written
    assert len(journal.get(COLLECTED_KEY)) == 2000  # one run per scattered task
    assert {key for key, _ in journal.items()} == {COLLECTED_KEY}
    journal.close()
    replayed = commit_of(Journal.open(tmp_path)).replay()
    assert [r.task_id.sequence for r in replayed] == list(range(0, 4000, 2))
    assert all(r.entry is None for r in replayed)
