"""Property tests of the task table CRDT: the merge is a join (commutative, associative,
idempotent), replicas that exchanged everything agree, and nothing ever regresses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as hs
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from meshgpu.core.tasks import Phase, TaskEntry, TaskId, TaskSpec, TaskState, TaskTable
from meshgpu.core.tasks import state as st
from meshgpu.core.tasks.state import OrderKey
from meshgpu.core.tasks.table import merge_entries

SPEC = TaskSpec("m", "i")
WORKERS = ["w0", "w1", "w2"]
TASK_IDS = [TaskId("n0", s) for s in range(3)] + [TaskId("n1", 0)]

states = hs.builds(
    TaskState,
    phase=hs.sampled_from(Phase),
    attempt=hs.integers(0, 3),
    view=hs.integers(0, 3),
    worker=hs.sampled_from([None, *WORKERS]),
    failures=hs.integers(0, 2),
    reason=hs.sampled_from(["", "oom", "bad model"]),
)
node_sets = hs.frozensets(hs.sampled_from(["n0", "n1", "n2"]))
entries = hs.builds(
    TaskEntry,
    task_id=hs.just(TaskId("n0", 1)),
    spec=hs.just(SPEC),
    state=states,
    holders=node_sets,
    result_holders=node_sets,
    delivered=hs.booleans(),
)


# merge_entries is a pure function of two small entries, CPU only: Hypothesis's per-example
# deadline (200 ms) timed the scheduler of a loaded machine, not the merge, and failed
# test_merge_commutes there. Hence no deadline for the three merge properties.
MERGE_SETTINGS = settings(deadline=None)


@MERGE_SETTINGS
@given(entries, entries)
def test_merge_commutes(a: TaskEntry, b: TaskEntry) -> None:
    assert merge_entries(a, b) == merge_entries(b, a)


@MERGE_SETTINGS
@given(entries, entries, entries)
def test_merge_associates(a: TaskEntry, b: TaskEntry, c: TaskEntry) -> None:
    assert merge_entries(merge_entries(a, b), c) == merge_entries(a, merge_entries(b, c))


@MERGE_SETTINGS
@given(entries, entries)
def test_merge_is_idempotent_and_an_upper_bound(a: TaskEntry, b: TaskEntry) -> None:
    m = merge_entries(a, b)
    assert merge_entries(a, a) == a and merge_entries(m, b) == m
    assert m.state.order_key >= max(a.state.order_key, b.state.order_key)
    assert a.holders <= m.holders and b.holders <= m.holders


class TableReplicas(RuleBasedStateMachine):
    """Three replicas; rules are local transitions (legal ones only) and pairwise syncs in
    any order, any number of times; GC happens whenever an entry is collectable."""

    @initialize()
    def start(self) -> None:
        self.replicas = [TaskTable() for _ in range(3)]
        self.seen: list[dict[TaskId, OrderKey]] = [{} for _ in range(3)]
        self.ever_collected: set[TaskId] = set()

    def _entry(self, r: int, task_id: TaskId) -> TaskEntry | None:
        return self.replicas[r].get(task_id)

    @rule(r=hs.integers(0, 2), task_id=hs.sampled_from(TASK_IDS))
    def submit(self, r: int, task_id: TaskId) -> None:
        if task_id not in self.ever_collected:
            self.replicas[r].merge(TaskEntry(task_id, SPEC, holders=frozenset({f"n{r}"})))

    @rule(
        r=hs.integers(0, 2),
        task_id=hs.sampled_from(TASK_IDS),
        action=hs.sampled_from(["assign", "retry", "complete", "fail", "expire"]),
        view=hs.integers(0, 4),
        worker=hs.sampled_from(WORKERS),
    )
    def transition(self, r: int, task_id: TaskId, action: str, view: int, worker: str) -> None:
        current = self._entry(r, task_id)
        if current is None:
            return
        s = current.state
        legal = {
            "assign": s.phase in (Phase.PENDING, Phase.ASSIGNED, Phase.RETRYING),
            "retry": s.phase is Phase.ASSIGNED,
            "complete": s.phase in (Phase.ASSIGNED, Phase.RETRYING),
            "fail": not s.terminal,
            "expire": not s.terminal,
        }[action]
        if not legal:
            return
        new = {
            "assign": lambda: st.assign(s, view, worker),
            "retry": lambda: st.retry(s, "oom"),
            "complete": lambda: st.complete(s, s.attempt, s.view, worker),
            "fail": lambda: st.fail(s, "bad input"),
            "expire": lambda: st.expire(s),
        }[action]()
        self.replicas[r].update(task_id, state=new)

    @rule(r=hs.integers(0, 2), task_id=hs.sampled_from(TASK_IDS))
    def deliver(self, r: int, task_id: TaskId) -> None:
        current = self._entry(r, task_id)
        if current is not None and current.state.terminal:
            self.replicas[r].update(task_id, delivered=True)

    @rule(r=hs.integers(0, 2), task_id=hs.sampled_from(TASK_IDS))
    def collect(self, r: int, task_id: TaskId) -> None:
        current = self._entry(r, task_id)
        if current is not None and current.collectable:
            self.replicas[r].collect(task_id)
            self.ever_collected.add(task_id)

    @rule(src=hs.integers(0, 2), dst=hs.integers(0, 2))
    def sync(self, src: int, dst: int) -> None:
        source, target = self.replicas[src], self.replicas[dst]
        target.merge_collected(list(source.collected.runs()))
        for e in source:
            target.merge(e)

    @rule()
    def sync_all(self) -> None:
        for _ in range(2):
            for src in range(3):
                for dst in range(3):
                    self.sync(src, dst)
        first = self.replicas[0]
        for other in self.replicas[1:]:
            assert other.snapshot() == first.snapshot()
            assert list(other.collected.runs()) == list(first.collected.runs())

    @invariant()
    def no_regression_and_no_resurrection(self) -> None:
        for r, table in enumerate(self.replicas):
            for e in table:
                assert e.task_id not in table.collected
                previous = self.seen[r].get(e.task_id)
                assert previous is None or e.state.order_key >= previous, (
                    f"replica {r}: {e.task_id} regressed"
                )
                self.seen[r][e.task_id] = e.state.order_key
            for task_id in list(self.seen[r]):
                if task_id in table.collected:
                    assert task_id not in table


TestTableReplicas = TableReplicas.TestCase
TestTableReplicas.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
