"""Membership's transition table (meshgpu.core.membership.state.TRANSITIONS): every held
state, every rumour, at a lower, equal and higher incarnation, against SWIM's rules written
out independently, both as the table says and as the merge rules that apply it act."""

from __future__ import annotations

import itertools
import random

import pytest

from meshgpu.core.component import NodeContext
from meshgpu.core.config import MeshConfig
from meshgpu.core.membership import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    TRANSITIONS,
    MemberState,
    MemberTable,
    Needs,
    Rumour,
    transition,
)
from meshgpu.core.membership.wire import Alive, Dead, Left, Suspect
from meshgpu.core.suspicion import LocalHealth

ADDRESS = ("10.0.0.5", 7946)
HELD_INCARNATION = 5


def table_holding(state: MemberState, lifeguard: bool = False) -> MemberTable:
    """A table that holds member "x" in ``state`` at incarnation 5."""
    config = MeshConfig(lifeguard=lifeguard)
    context = NodeContext("me", ("10.0.0.1", 7946), config, random.Random(1))
    table = MemberTable(context, LocalHealth(8), now=0.0)
    table.apply_alive(Alive("x", ADDRESS, HELD_INCARNATION), 0.0, "join")
    if state in (SUSPECT, DEAD):
        table.apply_suspect(Suspect("x", HELD_INCARNATION, "me"), 0.1, "probe failed")
    if state is DEAD:
        table.apply_dead(Dead("x", HELD_INCARNATION, "me"), 0.2, "suspicion timeout")
    if state is LEFT:
        table.apply_left(Left("x", HELD_INCARNATION), 0.2, "left")
    assert table.members["x"].state is state
    return table


def swim_rule(held: MemberState, rumour: Rumour, incarnation: int, ours: int) -> MemberState | None:
    """The rules as SWIM and memberlist state them, written independently of the table."""
    if rumour is Rumour.ALIVE:
        return ALIVE if incarnation > ours else None
    if rumour is Rumour.SUSPECT:
        return SUSPECT if held is ALIVE and incarnation >= ours else None
    if rumour is Rumour.DEAD:
        return DEAD if held in (ALIVE, SUSPECT) and incarnation >= ours else None
    return LEFT if held is not LEFT and incarnation >= ours else None


def tell(table: MemberTable, rumour: Rumour, incarnation: int) -> bool:
    """Apply a rumour about "x" (a death is this node's own verdict: no hearsay)."""
    if rumour is Rumour.ALIVE:
        return table.apply_alive(Alive("x", ADDRESS, incarnation), 1.0, "gossip")
    if rumour is Rumour.SUSPECT:
        return table.apply_suspect(Suspect("x", incarnation, "y"), 1.0, "gossip")
    if rumour is Rumour.DEAD:
        return table.apply_dead(Dead("x", incarnation, "me"), 1.0, "gossip")
    return table.apply_left(Left("x", incarnation), 1.0, "gossip")


@pytest.mark.parametrize(
    ("held", "rumour", "incarnation"),
    list(itertools.product(MemberState, Rumour, (4, 5, 6))),
)
def test_the_rules_move_a_member_exactly_as_the_table_says(
    held: MemberState, rumour: Rumour, incarnation: int
) -> None:
    table = table_holding(held)
    tell(table, rumour, incarnation)
    after = table.members["x"]
    expected = swim_rule(held, rumour, incarnation, HELD_INCARNATION)
    assert transition(held, rumour, incarnation, HELD_INCARNATION) == expected
    if expected is None:
        assert (after.state, after.incarnation) == (held, HELD_INCARNATION)
    else:
        assert (after.state, after.incarnation) == (expected, incarnation)


def test_the_table_as_written() -> None:
    # Nothing revives a member without a newer incarnation; nothing leaves LEFT but Alive.
    for (held, rumour), (needs, target) in TRANSITIONS.items():
        if target is ALIVE:
            assert rumour is Rumour.ALIVE and needs is Needs.NEWER
        if held is LEFT:
            assert target is ALIVE
    assert {target for _, target in TRANSITIONS.values()} == set(MemberState)
    assert (SUSPECT, Rumour.SUSPECT) not in TRANSITIONS  # a confirmation, not a move


def test_lifeguard_hears_another_nodes_death_verdict_as_a_suspicion() -> None:
    table = table_holding(ALIVE, lifeguard=True)
    assert table.apply_dead(Dead("x", HELD_INCARNATION, "far-away"), 1.0, "gossip")
    assert table.members["x"].state is SUSPECT
