"""SWIM merge rules: unit cases and a stateful property test over arbitrary update orders."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from meshgpu.core.component import NodeContext
from meshgpu.core.config import MeshConfig
from meshgpu.core.membership import MemberState, MemberTable
from meshgpu.core.membership.wire import Alive, Dead, Left, MemberRecord, Suspect
from meshgpu.core.suspicion import LocalHealth

ADDRESS = ("10.0.0.5", 7946)


class Hearsay:
    """A table listener that writes down whom the table wants told of an accusation."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def suspicion_scheduled(self, node_id: str, deadline: float) -> None:
        pass

    def suspicion_cleared(self, node_id: str) -> None:
        pass

    def new_suspect(self, node_id: str) -> None:
        pass

    def new_member(self, node_id: str) -> None:
        pass

    def new_members(self, node_ids: list[str]) -> None:
        pass

    def gone(self, node_id: str) -> None:
        pass

    def hearsay(self, node_id: str) -> None:
        self.told.append(node_id)


def make_table(lifeguard: bool = True, listener: Hearsay | None = None) -> MemberTable:
    context = NodeContext(
        "me", ("10.0.0.1", 7946), MeshConfig(lifeguard=lifeguard), random.Random(1)
    )
    return MemberTable(context, LocalHealth(8), now=0.0, listener=listener)


def state(table: MemberTable, node_id: str) -> tuple[MemberState, int]:
    info = table.members[node_id]
    return info.state, info.incarnation


def test_join_suspect_refute_cycle() -> None:
    table = make_table()
    assert table.apply_alive(Alive("x", ADDRESS, 0), 0.0, "join")
    assert table.apply_suspect(Suspect("x", 0, "y"), 1.0, "gossip")
    assert state(table, "x") == (MemberState.SUSPECT, 0)
    assert not table.apply_alive(Alive("x", ADDRESS, 0), 1.1, "stale")  # same inc: no refute
    assert table.apply_alive(Alive("x", ADDRESS, 1), 1.2, "refuted")
    assert state(table, "x") == (MemberState.ALIVE, 1)
    assert "x" not in table.suspicions


def test_dead_is_remembered_and_only_a_higher_incarnation_revives() -> None:
    table = make_table()
    table.apply_alive(Alive("x", ADDRESS, 2), 0.0, "join")
    table.apply_suspect(Suspect("x", 2, "me"), 0.5, "probe failed")
    assert table.apply_dead(Dead("x", 2, "me"), 1.0, "timeout")
    assert state(table, "x") == (MemberState.DEAD, 2)
    assert not table.apply_alive(Alive("x", ADDRESS, 2), 2.0, "stale gossip")
    assert state(table, "x") == (MemberState.DEAD, 2)
    assert table.apply_alive(Alive("x", ADDRESS, 3), 3.0, "back")
    assert state(table, "x") == (MemberState.ALIVE, 3)


def test_hearsay_death_of_an_alive_member_becomes_a_short_suspicion_with_lifeguard() -> None:
    hearsay = Hearsay()
    told = hearsay.told
    table = make_table(lifeguard=True, listener=hearsay)
    table.apply_alive(Alive("x", ADDRESS, 0), 0.0, "join")
    table.apply_dead(Dead("x", 0, "far-away"), 1.0, "gossip")
    assert state(table, "x") == (MemberState.SUSPECT, 0)
    assert told == ["x"]
    suspicion = table.suspicions["x"]
    assert suspicion.deadline() == suspicion.started + suspicion.minimum


def test_plain_swim_accepts_a_death_at_once() -> None:
    table = make_table(lifeguard=False)
    table.apply_alive(Alive("x", ADDRESS, 0), 0.0, "join")
    table.apply_dead(Dead("x", 0, "far-away"), 1.0, "gossip")
    assert state(table, "x") == (MemberState.DEAD, 0)


def test_accusations_of_self_are_refuted_with_a_higher_incarnation() -> None:
    table = make_table()
    assert table.apply_suspect(Suspect("me", 0, "y"), 1.0, "gossip")
    assert table.incarnation == 1
    assert table.apply_dead(Dead("me", 4, "y"), 2.0, "gossip")
    assert table.incarnation == 5
    assert table.members["me"].state is MemberState.ALIVE
    assert not table.apply_dead(Dead("me", 4, "y"), 3.0, "stale")


def test_push_pull_dead_record_of_unknown_or_dead_member_changes_nothing() -> None:
    table = make_table(lifeguard=False)
    assert not table.apply_record(MemberRecord("ghost", ADDRESS, "dead", 3), "peer", 0.0)
    assert "ghost" not in table.members
    table.apply_alive(Alive("x", ADDRESS, 0), 0.0, "join")
    assert table.apply_record(MemberRecord("x", ADDRESS, "dead", 0), "peer", 1.0)
    assert state(table, "x") == (MemberState.SUSPECT, 0)  # memberlist: dead -> suspect


def test_push_pull_death_of_an_alive_member_is_hearsay_with_lifeguard() -> None:
    """A peer's table saying dead is a verdict like a gossiped Dead: a short suspicion and
    the member told (a node cut off while the member crashed learns it at the heal)."""
    hearsay = Hearsay()
    told = hearsay.told
    table = make_table(lifeguard=True, listener=hearsay)
    table.apply_alive(Alive("x", ADDRESS, 1), 0.0, "join")
    assert not table.apply_record(MemberRecord("x", ADDRESS, "dead", 0), "peer", 1.0)  # stale
    assert state(table, "x") == (MemberState.ALIVE, 1)
    assert table.apply_record(MemberRecord("x", ADDRESS, "dead", 1), "peer", 1.0)
    assert state(table, "x") == (MemberState.SUSPECT, 1)
    assert told == ["x"]
    suspicion = table.suspicions["x"]
    assert suspicion.deadline() == suspicion.started + suspicion.minimum
    # a suspicion in a peer's table is still only told, not believed
    table.apply_alive(Alive("y", ADDRESS, 0), 0.0, "join")
    assert not table.apply_record(MemberRecord("y", ADDRESS, "suspect", 0), "peer", 1.0)
    assert state(table, "y") == (MemberState.ALIVE, 0)
    assert told == ["x", "y"]


def test_left_is_final_for_its_incarnation() -> None:
    table = make_table()
    table.apply_alive(Alive("x", ADDRESS, 1), 0.0, "join")
    assert table.apply_left(Left("x", 1), 1.0, "left")
    assert not table.apply_alive(Alive("x", ADDRESS, 1), 2.0, "stale")
    assert not table.apply_suspect(Suspect("x", 1, "y"), 2.0, "stale")
    assert state(table, "x") == (MemberState.LEFT, 1)


OTHERS = ("a", "b", "c")
ids = st.sampled_from((*OTHERS, "me"))
incarnations = st.integers(0, 4)


class MembershipMachine(RuleBasedStateMachine):
    """Any sequence of updates, in any order: incarnations never go down, nobody is
    revived without a higher incarnation, this node is never anything but alive, and the
    live list always matches the table."""

    def __init__(self) -> None:
        super().__init__()
        self.table = make_table()
        self.now = 0.0
        self.seen: dict[str, tuple[MemberState, int]] = {}

    def _step(self) -> None:
        self.now += 0.1

    @rule(node_id=ids, inc=incarnations)
    def alive(self, node_id: str, inc: int) -> None:
        self._step()
        self.table.apply_alive(Alive(node_id, ADDRESS, inc), self.now, "rule")

    @rule(node_id=ids, inc=incarnations, accuser=ids)
    def suspect(self, node_id: str, inc: int, accuser: str) -> None:
        self._step()
        self.table.apply_suspect(Suspect(node_id, inc, accuser), self.now, "rule")

    @rule(node_id=ids, inc=incarnations, accuser=ids)
    def dead(self, node_id: str, inc: int, accuser: str) -> None:
        self._step()
        self.table.apply_dead(Dead(node_id, inc, accuser), self.now, "rule")

    @rule(node_id=ids, inc=incarnations)
    def left(self, node_id: str, inc: int) -> None:
        self._step()
        self.table.apply_left(Left(node_id, inc), self.now, "rule")

    @rule(node_id=ids, inc=incarnations, code=st.sampled_from(("alive", "suspect", "dead", "left")))
    def push_pull(self, node_id: str, inc: int, code: str) -> None:
        self._step()
        self.table.apply_record(MemberRecord(node_id, ADDRESS, code, inc), "a", self.now)

    @rule(node_id=st.sampled_from(OTHERS))
    def suspicion_expires(self, node_id: str) -> None:
        self._step()
        self.table.expire_suspicion(node_id, self.now)

    @rule(node_id=st.sampled_from(OTHERS))
    def retention_passes(self, node_id: str) -> None:
        self._step()
        self.table.forget(node_id)
        if node_id not in self.table.members:
            self.seen.pop(node_id, None)  # forgotten: may be learned again at any incarnation

    @invariant()
    def push_pull_table_is_every_member_this_node_first(self) -> None:
        # The records are kept as entries change (not rebuilt from the table): they must
        # still be the table's, in its order, after any change, forgetting included.
        me = self.table.members["me"]
        expected = (
            me.to_record(),
            *(i.to_record() for i in self.table.members.values() if i is not me),
        )
        assert self.table.records() == expected

    @invariant()
    def incarnations_only_grow_and_gone_members_stay_gone(self) -> None:
        for node_id, info in self.table.members.items():
            previous = self.seen.get(node_id)
            if previous is not None:
                old_state, old_inc = previous
                assert info.incarnation >= old_inc, (node_id, previous, info)
                if old_state in (MemberState.DEAD, MemberState.LEFT) and info.state in (
                    MemberState.ALIVE,
                    MemberState.SUSPECT,
                ):
                    assert info.incarnation > old_inc, (node_id, previous, info)
            self.seen[node_id] = (info.state, info.incarnation)

    @invariant()
    def self_is_alive(self) -> None:
        assert self.table.members["me"].state is MemberState.ALIVE

    @invariant()
    def live_list_matches_table(self) -> None:
        live = sorted(
            n
            for n, info in self.table.members.items()
            if n != "me" and info.state in (MemberState.ALIVE, MemberState.SUSPECT)
        )
        assert sorted(self.table.live) == live
        assert sorted(self.table.gone) == sorted(
            n for n, info in self.table.members.items() if n != "me" and n not in live
        )
        assert set(self.table.suspicions) <= {
            n for n in live if self.table.members[n].state is MemberState.SUSPECT
        }


TestMembershipMachine = MembershipMachine.TestCase
TestMembershipMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def make_table_with(config: MeshConfig) -> MemberTable:
    context = NodeContext("me", ("10.0.0.1", 7946), config, random.Random(1))
    table = MemberTable(context, LocalHealth(8), now=0.0)
    for name in "abcdefgh":
        table.apply_alive(Alive(name, (f"10.0.0.{ord(name)}", 7946), 0), 0.0, "join")
    return table


def test_suspicion_refinement_alone_decides_the_shrinking_timeout() -> None:
    shrinking = make_table_with(MeshConfig(lifeguard_probe=False, lifeguard_buddy=False))
    fixed = make_table_with(MeshConfig(lifeguard_suspicion=False))
    for table in (shrinking, fixed):
        table.apply_suspect(Suspect("a", 0, "b"), 1.0, "gossip")
    long, short = shrinking.suspicions["a"], fixed.suspicions["a"]
    assert long.maximum > long.minimum  # starts long, shrinks with confirmations
    assert short.maximum == short.minimum  # SWIM's fixed timeout


def test_buddy_refinement_alone_decides_the_hearsay_rule() -> None:
    buddy = make_table_with(MeshConfig(lifeguard_probe=False, lifeguard_suspicion=False))
    no_buddy = make_table_with(MeshConfig(lifeguard_buddy=False))
    for table in (buddy, no_buddy):
        table.apply_dead(Dead("a", 0, "far-away"), 1.0, "gossip")
    assert state(buddy, "a") == (MemberState.SUSPECT, 0)
    assert state(no_buddy, "a") == (MemberState.DEAD, 0)


def test_push_pull_parts_kept_equal_the_split_of_the_table() -> None:
    # record_parts extends its split as members are added instead of splitting the table
    # per exchange: after any change (joins, state changes, new addresses, members
    # forgotten and learned again) it must be chunk_records' split of the records.
    from meshgpu.core.membership.wire import chunk_records

    table = make_table()
    rng = random.Random(7)
    ids = [f"node-{i:0{rng.choice((1, 3, 5))}d}" for i in range(200)]
    now = 0.0
    for step in range(3000):
        now += 0.01
        node_id = rng.choice(ids)
        incarnation = table.members[node_id].incarnation + 1 if node_id in table.members else 0
        action = rng.random()
        if action < 0.6:
            host = "10.0.0.9"
            if action < 0.05:  # a new address: its record's size may change
                host = f"10.0.{rng.randrange(3)}.{rng.randrange(1, 250)}"
            table.apply_alive(Alive(node_id, (host, 7946), incarnation), now, "join")
        elif action < 0.8:
            table.apply_dead(Dead(node_id, incarnation, "x"), now, "dead")
        else:
            table.forget(node_id)
        if step % 7 == 0:
            assert table.record_parts() == chunk_records(table.records()), step
    assert len(table.record_parts()) > 3
