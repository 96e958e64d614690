"""Unit tests of the task state lattice, the transition table, the table CRDT and its wire
and journal forms."""

from __future__ import annotations

import pytest

from meshgpu.core.tasks import (
    TRANSITIONS,
    CollectedSet,
    Phase,
    Priority,
    TaskEntry,
    TaskId,
    TaskRecord,
    TaskSpec,
    TaskState,
    TaskTable,
    join,
    merge_entries,
    record_from_bytes,
    record_to_bytes,
)
from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.wire import entry_from_wire, entry_to_wire, state_from_wire, state_to_wire
from meshgpu.errors import DecodeError, TaskError

SPEC = TaskSpec("m" * 64, "i" * 64, (("x", (1, 3)),), Priority.HIGH, deadline_s=5.0)


def test_lifecycle_moves_strictly_up() -> None:
    s0 = st.PENDING
    s1 = st.assign(s0, view=3, worker="w1")
    s2 = st.retry(s1, "device lost")
    s3 = st.assign(s2, view=4, worker="w2")
    s4 = st.complete(s3, attempt=2, view=4, worker="w2")
    keys = [s.order_key for s in (s0, s1, s2, s3, s4)]
    assert keys == sorted(keys) and len(set(keys)) == 5
    assert (s1.attempt, s3.attempt, s2.failures, s4.failures) == (1, 2, 1, 1)


def test_terminal_states_take_no_local_transition() -> None:
    done = st.complete(st.assign(st.PENDING, 1, "w"), 1, 1, "w")
    failed = st.fail(st.PENDING, "bad model")
    for terminal in (done, failed):
        with pytest.raises(TaskError, match="illegal task transition"):
            st.assign(terminal, 9, "w")
        with pytest.raises(TaskError):
            st.expire(terminal)


def test_retry_from_pending_is_illegal() -> None:
    with pytest.raises(TaskError, match="pending --retry--> retrying"):
        st.retry(st.PENDING, "x")


def test_transition_table_covers_only_non_terminal_sources() -> None:
    # The one exception: a DONE whose result is lost opens a new epoch (state.py).
    out_of_terminal = {key: v for key, v in TRANSITIONS.items() if key[0].terminal}
    assert out_of_terminal == {(Phase.DONE, st.Cause.LOSE_RESULT): Phase.RETRYING}
    assert {target for target in TRANSITIONS.values()} == {
        Phase.ASSIGNED,
        Phase.RETRYING,
        Phase.DONE,
        Phase.FAILED,
    }


def test_done_beats_failed_and_late_attempt_success_beats_reassignment() -> None:
    a1 = st.assign(st.PENDING, 1, "w1")
    a2 = st.assign(a1, 2, "w2")
    late_done = st.complete(a1, 1, 1, "w1")
    assert join(a2, late_done) == late_done
    failed = st.expire(a2)
    assert join(failed, late_done) == late_done == join(late_done, failed)


def test_concurrent_assignments_resolve_to_higher_view() -> None:
    a = st.assign(st.PENDING, 7, "w1")
    b = st.assign(st.PENDING, 8, "w0")
    assert join(a, b) is b and join(b, a) is b


def entry(state: TaskState = st.PENDING, **kw: object) -> TaskEntry:
    return TaskEntry(TaskId("n1", 5), SPEC, state, **kw)  # type: ignore[arg-type]


def test_entry_merge_unions_holders_and_keeps_delivered() -> None:
    a = entry(holders=frozenset({"n1"}), delivered=True)
    b = entry(st.assign(st.PENDING, 1, "w"), holders=frozenset({"n2"}))
    m = merge_entries(a, b)
    assert m.holders == {"n1", "n2"} and m.delivered and m.state.phase is Phase.ASSIGNED
    assert merge_entries(b, a) == m


def test_table_tombstone_beats_stale_entry() -> None:
    table = TaskTable()
    e = entry(st.fail(st.PENDING, "bad"), delivered=True)
    assert table.merge(e).changed
    assert table.collect(e.task_id) == e
    outcome = table.merge(entry())
    assert not outcome.changed and e.task_id not in table


def test_table_update_never_moves_down() -> None:
    table = TaskTable()
    table.merge(entry(st.assign(st.PENDING, 2, "w")))
    outcome = table.update(TaskId("n1", 5), state=st.PENDING, holders=frozenset({"h"}))
    after = table.get(TaskId("n1", 5))
    assert outcome.changed and after is not None
    assert after.state.phase is Phase.ASSIGNED and after.holders == {"h"}


def test_merge_collected_drops_entries() -> None:
    table = TaskTable()
    table.merge(entry())
    dropped = table.merge_collected([("n1", 0, 10)])
    assert [d.task_id for d in dropped] == [TaskId("n1", 5)] and len(table) == 0


def test_collected_set_keeps_runs_compact() -> None:
    collected = CollectedSet()
    for seq in [5, 3, 4, 9, 6, 8, 7]:
        collected.add(TaskId("a", seq))
    assert list(collected.runs()) == [("a", 3, 9)]
    assert TaskId("a", 6) in collected and TaskId("a", 10) not in collected
    assert TaskId("b", 6) not in collected


def test_wire_and_journal_round_trip() -> None:
    e = entry(st.retry(st.assign(st.PENDING, 2, "w"), "oom"), holders=frozenset({"n1", "n2"}))
    assert entry_from_wire(entry_to_wire(e)) == e
    for record in (TaskRecord(e.task_id, e), TaskRecord(e.task_id, None)):
        assert record_from_bytes(record_to_bytes(record)) == record


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x94\x01\xa1a\x01\x05"])
def test_bad_journal_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        record_from_bytes(data)


def test_task_id_text_round_trip() -> None:
    assert TaskId.parse(str(TaskId("n-1/x", 42))) == TaskId("n-1/x", 42)
    with pytest.raises(TaskError, match="bad task id"):
        TaskId.parse("nope")


def test_spec_rejects_nonsense() -> None:
    with pytest.raises(TaskError, match="replicas"):
        TaskSpec("m", "i", replicas=0)
    with pytest.raises(TaskError, match="model digest"):
        TaskSpec("", "i")


def test_losing_a_result_moves_up_into_the_next_epoch() -> None:
    done = st.complete(st.assign(st.PENDING, 1, "n1"), 1, 1, "n1")
    lost = st.lose_result(done, "result lost")
    assert lost.phase is Phase.RETRYING and lost.epoch == 1
    assert lost.order_key > done.order_key and st.join(done, lost) == lost
    assert lost.failures == done.failures  # not the task's fault: no retry budget used
    again = st.assign(lost, 2, "n2")
    assert again.epoch == 1 and st.join(again, done) == again
    assert state_from_wire(state_to_wire(again)) == again
    assert state_from_wire(state_to_wire(done)[:6]) == done  # a record from before epochs
